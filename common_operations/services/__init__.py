"""Application layer shared by REST and gRPC: rules applied once, transports stay thin."""
