"""db-deploy: deploy PostgreSQL schema changes with Alembic from CI/CD."""

__version__ = "0.1.0"
