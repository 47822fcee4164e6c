"""Identity: the citizen register (is a citizen known, and in good standing)."""
