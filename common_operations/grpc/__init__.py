"""gRPC transport: OperationsService servicer, server (health, reflection) and generated stubs."""
