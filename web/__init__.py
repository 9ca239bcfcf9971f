"""The web side: the HTTP API and the Gradio UI, both thin layers over GenerationService."""
