"""Inputs from users: fetching URLs under the address rules, and what of them is shown."""
