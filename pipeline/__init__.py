"""The model side (docs/ARCHITECTURE.md): request limits and model, the one generation
path (service, single flight, engine, rendering), loading and the demo model, warm-up.
Knows nothing of HTTP or Gradio."""
