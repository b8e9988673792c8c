"""The integration helpers' fixtures, for the fuzz tests that drive the running services."""

from tests.integration.conftest import reporter  # noqa: F401  (a fixture, used by name)
