"""deltaspec's command line (installed as the package `deltaspec_cli`): thin click wrappers over the API."""
