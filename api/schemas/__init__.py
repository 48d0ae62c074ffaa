"""Pydantic request and response bodies, named as in the API spec."""
