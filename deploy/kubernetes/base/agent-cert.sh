#!/bin/sh
# agent-cert.sh — the init container of the agent DaemonSet. It gives the
# agent on this node a client certificate of its own from cert-manager:
#
#   1. makes an ECDSA P-256 key in CERT_DIR (the pod's memory-backed
#      emptyDir: the key never leaves the pod) and a CSR for CN = DNS name =
#      NODE_NAME, the agent's host id, which the controller checks against
#      the agent's hello;
#   2. creates a cert-manager CertificateRequest (cert-manager.io/v1) for it,
#      owned by this pod, so that it is deleted with the pod;
#   3. waits until cert-manager has approved and signed it (its default
#      approver approves requests for its own issuers);
#   4. writes tls.key, tls.crt and ca.crt (the issuing CA, which also signed
#      the controller's certificate) for the agent.
#
# Needs a POSIX shell with mkdir, mv, rm and sleep, openssl 1.1.1 or later,
# kubectl, and a service account that may create and get
# certificaterequests in POD_NAMESPACE. Settings, from the
# environment: NODE_NAME, POD_NAME, POD_UID, POD_NAMESPACE (downward API);
# ISSUER_NAME (default mpfleet-ca), ISSUER_KIND (Issuer or ClusterIssuer,
# default Issuer), CERT_DURATION (default 8760h), CERT_DIR (default
# /etc/mpfleet/tls), TIMEOUT_SECONDS (default 300), POLL_SECONDS (default 2).
set -eu

me=agent-cert
fail() {
	echo "$me: $*" >&2
	exit 1
}

: "${NODE_NAME:?NODE_NAME: the node name (downward API spec.nodeName) is not set}"
: "${POD_NAME:?POD_NAME: the pod name (downward API metadata.name) is not set}"
: "${POD_UID:?POD_UID: the pod uid (downward API metadata.uid) is not set}"
: "${POD_NAMESPACE:?POD_NAMESPACE: the namespace (downward API metadata.namespace) is not set}"
issuer=${ISSUER_NAME:-mpfleet-ca}
issuer_kind=${ISSUER_KIND:-Issuer}
duration=${CERT_DURATION:-8760h}
dir=${CERT_DIR:-/etc/mpfleet/tls}
timeout=${TIMEOUT_SECONDS:-300}
poll=${POLL_SECONDS:-2}

case $NODE_NAME in
*[!a-z0-9.-]* | [.-]* | *[.-]) fail "NODE_NAME \"$NODE_NAME\": not a valid host id (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)" ;;
esac
case $issuer_kind in
Issuer | ClusterIssuer) ;;
*) fail "ISSUER_KIND \"$issuer_kind\": want Issuer or ClusterIssuer" ;;
esac
[ -d "$dir" ] || fail "CERT_DIR $dir: no such directory"

# Files are the group's (the pod's fsGroup) so that the agent, another user,
# can read them; nobody else can.
umask 027
work=$dir/.request
rm -rf "$work"
mkdir "$work"
trap 'rm -rf "$work"' EXIT

# (Through the shell, not -out, which makes the file 0600 whatever the umask.)
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 >"$work/tls.key" ||
	fail "openssl genpkey failed"
openssl req -new -key "$work/tls.key" -subj "/CN=$NODE_NAME" \
	-addext "subjectAltName=DNS:$NODE_NAME" -out "$work/request.csr" ||
	fail "openssl req failed (openssl 1.1.1 or later is needed for -addext)"
request=$(openssl base64 -A -in "$work/request.csr")

name=$(kubectl create --namespace "$POD_NAMESPACE" -o 'jsonpath={.metadata.name}' -f - <<CERTIFICATEREQUEST
apiVersion: cert-manager.io/v1
kind: CertificateRequest
metadata:
  generateName: mpfleet-agent-$NODE_NAME-
  namespace: $POD_NAMESPACE
  labels:
    app.kubernetes.io/name: mpfleet-agent
  ownerReferences:
    - apiVersion: v1
      kind: Pod
      name: $POD_NAME
      uid: $POD_UID
spec:
  issuerRef:
    group: cert-manager.io
    kind: $issuer_kind
    name: $issuer
  request: $request
  duration: $duration
  usages:
    - digital signature
    - client auth
CERTIFICATEREQUEST
) || fail "creating the CertificateRequest failed"
[ -n "$name" ] || fail "kubectl create printed no CertificateRequest name"
echo "$me: CertificateRequest $POD_NAMESPACE/$name for host $NODE_NAME, issuer $issuer_kind/$issuer"

# Wait for Ready=True; Ready=False with reason Failed or Denied, or a Denied
# or InvalidRequest condition, is final.
ready='{.status.conditions[?(@.type=="Ready")].status}'
reason='{.status.conditions[?(@.type=="Ready")].reason}'
denied='{.status.conditions[?(@.type=="Denied")].status}'
invalid='{.status.conditions[?(@.type=="InvalidRequest")].status}'
message='{.status.conditions[?(@.type=="Ready")].message}'
waited=0
while :; do
	state=$(kubectl get certificaterequest "$name" --namespace "$POD_NAMESPACE" \
		-o "jsonpath=$ready/$reason/$denied/$invalid") || fail "reading CertificateRequest $name failed"
	case $state in
	True/*) break ;;
	*/Denied/* | */*/True/* | */*/*/True | False/Failed/*)
		why=$(kubectl get certificaterequest "$name" --namespace "$POD_NAMESPACE" -o "jsonpath=$message" || true)
		fail "CertificateRequest $name was not issued ($state): $why"
		;;
	esac
	if [ "$waited" -ge "$timeout" ]; then
		fail "CertificateRequest $name not ready after ${timeout}s (conditions Ready/reason/Denied/InvalidRequest: $state): is issuer $issuer_kind/$issuer ready, and does an approver approve its requests?"
	fi
	sleep "$poll"
	waited=$((waited + poll))
done

kubectl get certificaterequest "$name" --namespace "$POD_NAMESPACE" -o 'jsonpath={.status.certificate}' |
	openssl base64 -d -A >"$work/tls.crt" || fail "reading the certificate failed"
kubectl get certificaterequest "$name" --namespace "$POD_NAMESPACE" -o 'jsonpath={.status.ca}' |
	openssl base64 -d -A >"$work/ca.crt" || fail "reading the CA certificate failed"
[ -s "$work/ca.crt" ] || fail "CertificateRequest $name has no status.ca: the issuer must return its CA (a CA issuer does)"

# The certificate must be for this key and this host, and verify with the CA.
certpub=$(openssl x509 -in "$work/tls.crt" -noout -pubkey) || fail "the issued certificate does not parse"
[ "$certpub" = "$(openssl pkey -in "$work/tls.key" -pubout)" ] || fail "the issued certificate is not for this pod's key"
subject=$(openssl x509 -in "$work/tls.crt" -noout -subject -nameopt RFC2253)
[ "$subject" = "subject=CN=$NODE_NAME" ] || fail "the issued certificate names \"$subject\", want CN=$NODE_NAME"
openssl verify -partial_chain -CAfile "$work/ca.crt" -purpose sslclient "$work/tls.crt" >/dev/null ||
	fail "the issued certificate does not verify with the CA of status.ca as a TLS client certificate"

mv "$work/tls.key" "$dir/tls.key"
mv "$work/tls.crt" "$dir/tls.crt"
mv "$work/ca.crt" "$dir/ca.crt"
end=$(openssl x509 -in "$dir/tls.crt" -noout -enddate)
echo "$me: wrote $dir/tls.crt for host $NODE_NAME, valid until ${end#notAfter=}"
