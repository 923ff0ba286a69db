"""Fleets: the same migrations deployed to many databases.

- `spec`: the fleet file read and checked (names, waves, keys), each target's inputs resolved
  (`{name}`, `${VAR}` percent-encoded in URLs, `database-url-env`);
- `shards`: the reusable workflow's plan (wave jobs × shards, within GitHub's matrix limits);
- `runner`: one child process per target (`python -m deployer deploy`), `max-parallel` at once,
  wave by wave, signals forwarded;
- `reports`: the per-target records on disk, read back (`fleet-report`).

`spec`, `shards` and `yamlish` use the standard library only: the workflow's plan job runs
`python3 -m deployer.fleet.shards` on the runner, without installing anything.
"""
