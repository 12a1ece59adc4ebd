"""End to end: the client against a live service, the demo world, README blocks, packaging."""
