// Package deploy holds what an operator installs: the systemd units
// (deploy/systemd), the default configuration files (deploy/config), the .deb
// packaging (deploy/packaging, make package), the container image builder
// (deploy/image, make images), Kubernetes manifests and example policies.
// Its tests check the units' hardening with systemd-analyze, build, lint and
// install the packages, and decode the Kubernetes manifests strictly.
package deploy
