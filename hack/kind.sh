#!/usr/bin/env bash
# devicelet in a local kind cluster, for users with Docker:
#
#   hack/kind.sh            create the cluster (or reuse it), build and load the image, deploy an
#                           in-cluster Mosquitto, install the chart with the MQTT provider, and start
#                           a simulated fleet (`devicelet simulate`) that becomes nodes
#   hack/kind.sh --mock     the same without a broker: the chart's mock provider simulates the devices
#   hack/kind.sh --delete   delete the cluster
#
# Needs docker, kind and kubectl on PATH; helm too, or Go to build the pinned Helm
# (hack/control-plane/build-helm.sh). KIND_CLUSTER (default devicelet) names the cluster, IMAGE
# (default devicelet:dev) the image, DEVICES (default 12) the size of the simulated fleet.
#
# Not run by CI, and never run where it was written: the project's machines have no Docker engine.
# It is shellcheck-clean (test/unit/shellcheck.test.ts), and what it puts together is tested on its
# own: the image (test/integration/image.test.ts builds it with buildah and runs it) and the chart
# (the chart tests render and install it).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cluster=${KIND_CLUSTER:-devicelet}
image=${IMAGE:-devicelet:dev}
devices=${DEVICES:-12}
namespace=devicelet
provider=mqtt
log() { printf '\033[1m[kind]\033[0m %s\n' "$*" >&2; }

case "${1:-}" in
  "") ;;
  --mock) provider=mock ;;
  --delete)
    kind delete cluster --name "$cluster"
    exit 0
    ;;
  -h | --help)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    exit 0
    ;;
  *)
    echo "kind.sh: unknown argument $1 (try --help)" >&2
    exit 2
    ;;
esac

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "kind.sh: $tool is needed on PATH" >&2; exit 1; }
done
helm=$(command -v helm || "$root/hack/control-plane/build-helm.sh")
context="kind-$cluster"
k() { kubectl --context "$context" "$@"; }

if kind get clusters 2>/dev/null | grep -x "$cluster" >/dev/null; then
  log "reusing kind cluster $cluster"
else
  log "creating kind cluster $cluster"
  kind create cluster --name "$cluster" --wait 120s
fi

log "building $image (Dockerfile) and loading it into the cluster"
docker build -t "$image" "$root"
kind load docker-image "$image" --name "$cluster"

values=$(mktemp)
trap 'rm -f "$values"' EXIT
# Device nodes get the label devicelet.dev/demo=true, which examples/demo/ selects. kind's API
# server reaches pod IPs, so the kubelet API (logs, exec) works; its serving certificate comes from
# a CSR that devicelet approves itself, which is for development clusters only.
cat >"$values" <<EOF
image:
  repository: ${image%:*}
  tag: ${image##*:}
kubeletApi:
  tls:
    csr:
      approve: true
config:
  nodes:
    extraLabels:
      devicelet.dev/demo: "true"
EOF

broker=mqtt://mosquitto.mosquitto.svc:1883
if [[ $provider == mqtt ]]; then
  log "deploying Mosquitto (namespace mosquitto; anonymous, plain MQTT inside the cluster: a demo only)"
  k apply -f - <<'EOF'
apiVersion: v1
kind: Namespace
metadata:
  name: mosquitto
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: mosquitto
  namespace: mosquitto
data:
  mosquitto.conf: |
    listener 1883
    allow_anonymous true
    persistence false
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: mosquitto
  namespace: mosquitto
spec:
  replicas: 1
  selector:
    matchLabels: { app: mosquitto }
  template:
    metadata:
      labels: { app: mosquitto }
    spec:
      containers:
        - name: mosquitto
          image: eclipse-mosquitto:2
          ports: [{ name: mqtt, containerPort: 1883 }]
          volumeMounts:
            - { name: config, mountPath: /mosquitto/config }
      volumes:
        - name: config
          configMap: { name: mosquitto }
---
apiVersion: v1
kind: Service
metadata:
  name: mosquitto
  namespace: mosquitto
spec:
  selector: { app: mosquitto }
  ports: [{ name: mqtt, port: 1883, targetPort: mqtt }]
EOF
  k -n mosquitto rollout status deployment/mosquitto --timeout 180s
  cat >>"$values" <<EOF
broker:
  url: $broker
devices:
  allow: ["sim-*"]
EOF
else
  cat >>"$values" <<EOF
  provider:
    type: mock
    config:
      devices:
        count: $devices
        idPrefix: sim-
EOF
fi

log "installing the chart (release devicelet, namespace $namespace)"
"$helm" upgrade --install devicelet "$root/charts/devicelet" --kube-context "$context" \
  --namespace "$namespace" --create-namespace -f "$values" --wait --timeout 5m

if [[ $provider == mqtt ]]; then
  log "starting a simulated fleet of $devices devices (deployment/devicelet-simulate)"
  k -n "$namespace" apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: devicelet-simulate
spec:
  replicas: 1
  selector:
    matchLabels: { app: devicelet-simulate }
  template:
    metadata:
      labels: { app: devicelet-simulate }
    spec:
      securityContext: { runAsNonRoot: true, runAsUser: 1000 }
      containers:
        - name: simulate
          image: $image
          imagePullPolicy: IfNotPresent
          args: [simulate, --broker, "$broker", --devices, "$devices", --pods-per-gateway, "12"]
          securityContext: { readOnlyRootFilesystem: true, allowPrivilegeEscalation: false }
EOF
  k -n "$namespace" rollout status deployment/devicelet-simulate --timeout 180s
fi

log "waiting for the device nodes"
for _ in $(seq 1 60); do
  count=$(k get nodes -l devicelet.dev/demo=true -o name | wc -l)
  ((count > 0)) && break
  sleep 2
done
k get nodes -l devicelet.dev/demo=true -L devicelet.dev/device-class,devicelet.dev/in-sync

cat <<EOF

devicelet runs in kind cluster $cluster (context $context), namespace $namespace. Next:

  kubectl --context $context get nodes -L devicelet.dev/device-class,devicelet.dev/in-sync
  kubectl --context $context apply -f $root/examples/demo/     # workloads on the device nodes
  kubectl --context $context -n devicelet-demo get pods -o wide
  kubectl --context $context -n $namespace logs deployment/devicelet
  kubectl --context $context -n $namespace get lease          # which replica leads
  kubectl --context $context -n $namespace port-forward svc/devicelet-metrics 8080   # then curl localhost:8080/metrics

  hack/kind.sh --delete                                       # remove the cluster
EOF
