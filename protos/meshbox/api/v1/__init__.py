"""Generated protobuf modules of the meshbox config model (version v1). Do not edit by hand."""
