"""Remote execution: hermetic behind the protocols of REAPI build farms."""
