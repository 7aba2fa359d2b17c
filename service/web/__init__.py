"""The HTTP entry point: pages, the JSON API and the app's lifespan."""
