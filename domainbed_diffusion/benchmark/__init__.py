"""The datasets the plugin knows, and its embedded benchmark: DigitStyles (``digitstyles``), its DomainBed
dataset class (``datasets``), its pretrained featurizer (``pretrained``) and the shipped models' paths
(``shipped``). The names below are light (no import): the hyperparameter registry reads them at start-up."""

DIGITSTYLES = "DigitStyles"
CPU_DATASETS = [DIGITSTYLES, "Debug28", "Debug224"]  # run with the embedded diffusion model
PAPERS_DATASETS = ["PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet"]
# DigitStyles' styles: its four envs, and the pool the embedded models and featurizer were trained on
DOMAINS = ["blueprint", "ink", "neon", "sketch"]  # sorted, as DomainBed lists env folders
PRETRAIN_STYLES = ["chalk", "mosaic", "pastel", "stencil"]  # pool-only: no benchmark domain is drawn in them
POOL_STYLES = DOMAINS + PRETRAIN_STYLES
