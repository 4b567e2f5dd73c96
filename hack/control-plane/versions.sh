# shellcheck shell=bash disable=SC2034 # sourced: the scripts that source it use the variables
# Pinned control-plane versions, read by build.sh and the test harness.
# Kubernetes 1.36: a supported minor with several patch releases behind it, new enough for the
# status-write resourceVersion checks devicelet must live with (1.35+), and building with the Go 1.26
# these machines have. etcd 3.6 is the line that Kubernetes 1.36 is released and tested with.
KUBE_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
# metrics-server serves the aggregated metrics.k8s.io API that `kubectl top` reads; the kubelet API
# tests build it to scrape devicelet the way a cluster would.
METRICS_SERVER_VERSION=v0.8.0
# Helm renders and installs charts/devicelet in the chart tests. Helm 4: Helm 3 has had only
# security fixes since 2025 and none after November 2026; chart apiVersion v2 works with both.
HELM_VERSION=v4.3.1
