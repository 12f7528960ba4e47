"""One public benchmark (ImgEdit, GEdit, RISEBench or KRIS) as a KFP component."""
