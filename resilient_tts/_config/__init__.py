"""Configuration: pydantic-settings at the edge, frozen value objects, request validation,
and the LiteLLM config import."""
