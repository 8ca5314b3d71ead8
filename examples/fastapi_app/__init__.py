"""FastAPI + async SQLAlchemy app with vecorm search (see README.md)."""
