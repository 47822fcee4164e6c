"""Service registry in etcd: key layout (keys), the etcd wrapper (etcd), an instance's
registration (registration) and discovery by list + watch (watch)."""
