"""REST front-end (Litestar): app factory, controllers, schemas, problem details, metrics."""
