"""HTTP plumbing around the routes: bearer auth and body limits, slow clients
(connections), the drain at shutdown, request metrics and timing."""
