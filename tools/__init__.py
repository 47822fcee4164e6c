"""The tooling built on the mesh (installed as `hms_tools`): the `mesh` command, the local dev
stack and its supervisor, certificate issuing and the demo. It may import the library, the
gateway and the services; nothing imports it back."""
