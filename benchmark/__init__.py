"""clbench: a benchmark harness for rehearsal-free class-incremental learning on pretrained ViTs."""
