"""Flask + Flask-SQLAlchemy app with vecorm search (see README.md)."""
