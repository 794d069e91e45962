"""The `trainer` commands: each parses its arguments and calls one library function."""
