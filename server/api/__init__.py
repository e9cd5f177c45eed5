"""The HTTP routers and their schemas."""
