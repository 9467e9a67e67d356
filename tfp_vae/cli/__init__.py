"""absl binaries; `bin/` holds launchers and setup.cfg installs them as console scripts."""
