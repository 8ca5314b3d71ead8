"""The scale layer: partitioning, Citus, read replicas and large index builds."""
