"""The HTTP API on the native routes: validation, errors, schema, store, UI."""
