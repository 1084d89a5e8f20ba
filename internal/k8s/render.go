package k8s

import (
	"bytes"
	"encoding/json"
	"fmt"

	"sigs.k8s.io/yaml"
)

// Formats are the output formats of Render.
var Formats = []string{"yaml", "json"}

// Render writes the objects in creation order: YAML documents, or a JSON v1 List (each
// as `kubectl apply -f` reads it).
func (o *Objects) Render(format string) ([]byte, error) {
	all := o.All()
	switch format {
	case "yaml":
		var buf bytes.Buffer
		for i, obj := range all {
			data, err := yaml.Marshal(obj)
			if err != nil {
				return nil, fmt.Errorf("render object %d: %w", i, err)
			}
			if i > 0 {
				buf.WriteString("---\n")
			}
			buf.Write(data)
		}
		return buf.Bytes(), nil
	case "json":
		list := struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Items      []any  `json:"items"`
		}{"v1", "List", all}
		data, err := json.MarshalIndent(list, "", "  ")
		if err != nil {
			return nil, fmt.Errorf("render: %w", err)
		}
		return append(data, '\n'), nil
	}
	return nil, fmt.Errorf("unknown output format %q; use yaml or json", format)
}
