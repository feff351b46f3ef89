"""`xylen install-service`: systemd units and launchd plists for serve, collect and retrain.

render.py turns the templates of packaging/ (shipped in the package as ``templates``) into files, as pure
functions; install.py plans, checks and writes them, and runs systemctl/launchctl.
"""
