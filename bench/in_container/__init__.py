"""Scripts the runner executes inside a bench container with the image's python3
(`docker exec NAME python3 -c SOURCE ARGS`), so what they time is on the container's side
of `docker exec`.  Each is standalone: the standard library only, no import from bench.
They print one JSON line; their functions take the paths as arguments so the unit tests
run them against a temporary folder."""
