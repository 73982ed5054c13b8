"""Adapters to other projects' tasks and environments; each imports its project only when used."""
