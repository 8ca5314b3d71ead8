"""The scale layer: partitioning, Citus, read replicas, large index builds and bulk loading."""
