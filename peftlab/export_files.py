"""The file names of an export folder, shared by the code that writes exports and the code that reads them."""

EXPORT_INFO_FILE = "peftlab_export.json"
REPORT_FILE = "export_report.json"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
