"""Helpers shared by test suites: real servers to test against (see ``victoria``)."""
