{{/* Labels of every monitoring object: the chart's, plus monitoring.labels (e.g. the release label
a Prometheus Operator's podMonitorSelector / ruleSelector looks for). */}}
{{- define "noria.monitoringLabels" -}}
{{ include "noria.labels" . }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}
