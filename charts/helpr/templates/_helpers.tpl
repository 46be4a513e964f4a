{{/* Chart name. */}}
{{- define "helpr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name. */}}
{{- define "helpr.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<component>, e.g. (dict "ctx" $ "component" "ingest"). */}}
{{- define "helpr.componentName" -}}
{{- printf "%s-%s" (include "helpr.fullname" .ctx | trunc 45 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "helpr.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: name + instance + component only. */}}
{{- define "helpr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "helpr.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of an object of a component. */}}
{{- define "helpr.labels" -}}
{{ include "helpr.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: helpr
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
helm.sh/chart: {{ include "helpr.chart" .ctx }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Marks the pods of the data plane: the only clients of the index, the search cluster and
the database. The operator gives its per-tenant sync pods the same label. */}}
{{- define "helpr.dataPlaneLabel" -}}
mail.helpr.dev/plane: data
{{- end -}}

{{- define "helpr.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "helpr.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "helpr.componentName" (dict "ctx" . "component" "operator")) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "helpr.controlSecretName" -}}
{{- default (include "helpr.componentName" (dict "ctx" . "component" "control-token")) .Values.controlApi.existingSecret -}}
{{- end -}}

{{- define "helpr.indexSecretName" -}}
{{- default (include "helpr.componentName" (dict "ctx" . "component" "index-secret")) .Values.search.index.existingSecret -}}
{{- end -}}

{{/* Pod Security Standard "restricted" at pod level. */}}
{{- define "helpr.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod Security Standard "restricted" at container level, plus a read-only root. */}}
{{- define "helpr.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Scheduling fields of a component's values (.v). */}}
{{- define "helpr.scheduling" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy peers of the data-plane pods: the release namespace and, when the operator
is limited to some namespaces, those (its sync pods run there); otherwise any namespace. */}}
{{- define "helpr.dataPlanePeers" -}}
{{- if .Values.operator.watchNamespaces }}
{{- range (prepend .Values.operator.watchNamespaces .Release.Namespace | uniq) }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
  podSelector:
    matchLabels:
      {{- include "helpr.dataPlaneLabel" $ | nindent 6 }}
{{- end }}
{{- else }}
- namespaceSelector: {}
  podSelector:
    matchLabels:
      {{- include "helpr.dataPlaneLabel" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* One egress rule: (dict "to" peers "ports" ports). Empty `to`: any destination on the ports. */}}
{{- define "helpr.egressRule" -}}
- ports:
  {{- range .ports }}
    - protocol: TCP
      port: {{ . }}
  {{- end }}
  {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* Volumes and mounts every data-plane container needs: settings, /tmp, and the KMS
credentials. */}}
{{- define "helpr.dataPlaneVolumes" -}}
- name: config
  configMap:
    name: {{ include "helpr.componentName" (dict "ctx" . "component" "config") }}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if eq .Values.kms.vault.auth.method "kubernetes" }}
- name: kms-token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          audience: {{ .Values.kms.vault.auth.kubernetes.audience }}
          expirationSeconds: 3600
{{- end }}
{{- with .Values.kms.vault.caSecretRef.name }}
- name: kms-ca
  secret:
    secretName: {{ . }}
    items:
      - key: {{ $.Values.kms.vault.caSecretRef.key }}
        path: ca.crt
{{- end }}
{{- if eq .Values.search.backend "tantivy" }}
- name: index-secret
  secret:
    secretName: {{ include "helpr.indexSecretName" . }}
    defaultMode: 0400
    items:
      - key: secret
        path: secret
{{- end }}
{{- if eq .Values.search.backend "quickwit" }}
{{- with .Values.search.quickwit.tls.caSecretRef.name }}
- name: search-ca
  secret:
    secretName: {{ . }}
    items:
      - key: {{ $.Values.search.quickwit.tls.caSecretRef.key }}
        path: ca.crt
{{- end }}
{{- with .Values.search.quickwit.tls.clientCertSecret }}
- name: search-client-cert
  secret:
    secretName: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "helpr.dataPlaneVolumeMounts" -}}
- name: config
  mountPath: /etc/helpr
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if eq .Values.kms.vault.auth.method "kubernetes" }}
- name: kms-token
  mountPath: /var/run/secrets/helpr/kms
  readOnly: true
{{- end }}
{{- if .Values.kms.vault.caSecretRef.name }}
- name: kms-ca
  mountPath: /etc/helpr-tls/kms
  readOnly: true
{{- end }}
{{- if eq .Values.search.backend "tantivy" }}
- name: index-secret
  mountPath: /var/run/secrets/helpr/index
  readOnly: true
{{- end }}
{{- if eq .Values.search.backend "quickwit" }}
{{- if .Values.search.quickwit.tls.caSecretRef.name }}
- name: search-ca
  mountPath: /etc/helpr-tls/search-ca
  readOnly: true
{{- end }}
{{- if .Values.search.quickwit.tls.clientCertSecret }}
- name: search-client-cert
  mountPath: /etc/helpr-tls/search-client
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Environment of every data-plane container: secrets only by reference. */}}
{{- define "helpr.dataPlaneEnv" -}}
- name: HELPR_CONFIG
  value: /etc/helpr/helpr.toml
- name: HELPR_LOG
  value: {{ .Values.config.logLevel | quote }}
{{- if eq .Values.search.backend "tantivy" }}
# The index role's secret: these shared roles present its token for every tenant (the
# operator gives each tenant's own pods a token for that tenant alone).
- name: HELPR_SEARCH__INDEX_SECRET_FILE
  value: /var/run/secrets/helpr/index/secret
{{- end }}
- name: HELPR_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret is required" .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
{{- if eq .Values.kms.vault.auth.method "token" }}
- name: HELPR_KMS__VAULT__AUTH__TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ required "kms.vault.auth.tokenSecretRef.name is required with kms.vault.auth.method token" .Values.kms.vault.auth.tokenSecretRef.name }}
      key: {{ .Values.kms.vault.auth.tokenSecretRef.key }}
{{- end }}
{{- with .Values.config.google.clientSecretRef.name }}
- name: HELPR_GOOGLE__CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.config.google.clientSecretRef.key }}
{{- end }}
{{- end -}}

{{/* Checksum annotation so pods restart when the settings change. */}}
{{- define "helpr.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}

{{/* Egress rule from a data-plane role to the search backend. */}}
{{- define "helpr.searchEgress" -}}
{{- if eq .Values.search.backend "tantivy" -}}
- ports:
    - protocol: TCP
      port: 7070
  to:
    - podSelector:
        matchLabels:
          {{- include "helpr.selectorLabels" (dict "ctx" . "component" "index") | nindent 10 }}
{{- else -}}
{{- include "helpr.egressRule" (dict "to" .Values.networkPolicy.search.to "ports" .Values.networkPolicy.search.ports) -}}
{{- end -}}
{{- end -}}

{{/* One EgressTarget of the operator's settings, as YAML:
(dict "ctx" $ "field" "database" "explicit" target "to" peers "ports" ports). A target with a
peer is taken as given (its ports default to .ports); otherwise it is derived from the chart's
NetworkPolicy peers: none means any address (as for the chart's own pods), ipBlocks without
`except` become cidrs, one selector peer with matchLabels only becomes the labels (a bare
podSelector means the release namespace; an empty namespaceSelector, any namespace, cannot be
expressed). Anything else fails with what to set. */}}
{{- define "helpr.operatorTarget" -}}
{{- $t := .explicit | default dict -}}
{{- $ports := $t.ports | default .ports -}}
{{- $where := printf "operator.tenantDefaults.network.%s" .field -}}
{{- $out := dict "namespaceLabels" ($t.namespaceLabels | default dict) "podLabels" ($t.podLabels | default dict) "cidrs" ($t.cidrs | default list) "udp" (or $t.udp .udp | default false) -}}
{{- if not (or $t.namespaceLabels $t.podLabels $t.cidrs) -}}
{{- if not .to -}}
{{- $_ := set $out "cidrs" (list "0.0.0.0/0" "::/0") -}}
{{- else -}}
{{- $cidrs := list -}}
{{- $selectors := 0 -}}
{{- range .to -}}
{{- $why := printf "%s: cannot derive it from networkPolicy.%s.to (%s); set %s (namespaceLabels, podLabels, cidrs, ports)" $where $.field (toJson .) $where -}}
{{- if .ipBlock -}}
{{- if or .ipBlock.except .namespaceSelector .podSelector -}}{{- fail $why -}}{{- end -}}
{{- $cidrs = append $cidrs .ipBlock.cidr -}}
{{- else -}}
{{- $selectors = add1 $selectors -}}
{{- if gt $selectors 1 -}}{{- fail $why -}}{{- end -}}
{{- $ns := .namespaceSelector -}}
{{- $pod := .podSelector -}}
{{- if or (and (hasKey . "namespaceSelector") (or (not $ns) $ns.matchExpressions (not $ns.matchLabels))) (and $pod $pod.matchExpressions) -}}{{- fail $why -}}{{- end -}}
{{- if $ns -}}
{{- $_ := set $out "namespaceLabels" $ns.matchLabels -}}
{{- else -}}
{{- $_ := set $out "namespaceLabels" (dict "kubernetes.io/metadata.name" $.ctx.Release.Namespace) -}}
{{- end -}}
{{- if $pod -}}{{- $_ := set $out "podLabels" $pod.matchLabels -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- $_ := set $out "cidrs" $cidrs -}}
{{- end -}}
{{- end -}}
{{- if not $ports -}}{{- fail (printf "%s needs ports" $where) -}}{{- end -}}
{{- $_ := set $out "ports" $ports -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The operator's settings file (OperatorSettings, operator/src/settings.rs). */}}
{{- define "helpr.operatorSettings" -}}
{{- $d := .Values.operator.tenantDefaults -}}
{{- $np := .Values.networkPolicy -}}
{{- $net := $d.network -}}
{{- $settings := dict "syncImage" (include "helpr.image" .) "imagePullPolicy" .Values.image.pullPolicy -}}
{{- with $d.dataPlaneConfigMap }}{{ $_ := set $settings "dataPlaneConfigMap" . }}{{ end -}}
{{- with $d.dataPlaneEnvSecret }}{{ $_ := set $settings "dataPlaneEnvSecret" . }}{{ end -}}
{{- $_ := set $settings "vault" (dict "keyPrefix" (default .Values.kms.vault.keyPrefix $d.vault.keyPrefix) "accessPrefix" $d.vault.accessPrefix "authMount" $d.vault.authMount "tokenTtl" $d.vault.tokenTtl) -}}
{{- $network := dict "googleApiCidrs" ($net.googleApiCidrs | default list) -}}
{{- $_ := set $network "dns" (include "helpr.operatorTarget" (dict "ctx" . "field" "dns" "explicit" $net.dns "to" $np.dns.to "ports" $np.dns.ports "udp" true) | fromYaml) -}}
{{- $_ := set $network "database" (include "helpr.operatorTarget" (dict "ctx" . "field" "database" "explicit" $net.database "to" $np.database.to "ports" $np.database.ports) | fromYaml) -}}
{{- $_ := set $network "kms" (include "helpr.operatorTarget" (dict "ctx" . "field" "kms" "explicit" $net.kms "to" $np.kms.to "ports" $np.kms.ports) | fromYaml) -}}
{{- if eq .Values.search.backend "tantivy" -}}
{{- $index := dict "podSelector" (dict "matchLabels" (include "helpr.selectorLabels" (dict "ctx" . "component" "index") | fromYaml)) -}}
{{- $_ := set $network "search" (include "helpr.operatorTarget" (dict "ctx" . "field" "search" "explicit" $net.search "to" (list $index) "ports" (list 7070)) | fromYaml) -}}
{{- else -}}
{{- $_ := set $network "search" (include "helpr.operatorTarget" (dict "ctx" . "field" "search" "explicit" $net.search "to" $np.search.to "ports" $np.search.ports) | fromYaml) -}}
{{- end -}}
{{- $_ := set $settings "network" $network -}}
{{- with .Values.config.push.audience }}{{ $_ := set $settings "pushAudiences" (concat (list .) ($.Values.config.push.additionalAudiences | default list)) }}{{ end -}}
{{- toYaml $settings -}}
{{- end -}}
