"""Services: the use cases (build, project, worker) written against ports only."""
