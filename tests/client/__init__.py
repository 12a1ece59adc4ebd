"""The Python client, the methods (CSR, SBSPO), pairs and eval CLIs."""
