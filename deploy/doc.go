// Package deploy holds what an operator installs: the systemd units
// (deploy/systemd), the default configuration files (deploy/config), the .deb
// packaging (deploy/packaging, make package), Kubernetes manifests and
// example policies. It has no code; its tests check the units' hardening
// with systemd-analyze and build, lint and install the packages.
package deploy
