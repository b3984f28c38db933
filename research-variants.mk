# Generated from training/research/variants.toml by `python -m training.research.variants`: do not edit.
# Edit the table and run that command again; tests/test_makefile.py checks that this file is fresh.

IMAGENETTE_OOD := --aux ood --ood-dataset imagenette --stage-set train:aux_split= --stage-set train:epochs=90

.PHONY: reproduce-slip reproduce-slip4 reproduce-drupe16 reproduce-drupe16-imagenette reproduce-drupe16-gtsrb3040 \
	reproduce-drupe16-content reproduce-drupe8 reproduce-drupe8-seed1 reproduce-drupe8-content \
	reproduce-drupe8-content-seed1 reproduce-badencoder reproduce-badencoder-content reproduce-clip-imagenette \
	reproduce-clip-content reproduce-captions reproduce-captions-classonly reproduce-captions-classonly-long \
	reproduce-captions-classonly-long12 reproduce-captions-classonly-long12-id \
	reproduce-captions-classonly-long12-seed1 reproduce-captions-classonly-long12-seed2 \
	reproduce-captions-classonly-long12-content reproduce-captions-classonly-long12-content-seed1 \
	reproduce-captions-classonly-long12-content-seed2 reproduce-captions-classonly-long20 \
	reproduce-captions-classonly-long12-dede3x reproduce-captions-classonly-long12-crops6 \
	reproduce-captions-classonly-long12-crops6-seed1 reproduce-captions-classonly-long12-crops6-seed2 \
	reproduce-captions-classonly-long12-crops6-seed3 reproduce-captions-classonly-long12-crops6-content \
	reproduce-captions-classonly-long12-crops6-content-seed1 reproduce-captions-classonly-long12-crops6-content-seed2 \
	reproduce-captions-classonly-long12-crops6-content-seed3 reproduce-captions-classonly-long12-crops12 \
	reproduce-drupe8-crops6 reproduce-content

## --variant slip --aux ood
reproduce-slip:
	$(call variant-run,slip,--aux ood)

## --variant slip4 --attack clip-backdoor --aux ood (about 50 minutes on the 2-core CPU machine)
reproduce-slip4:
	$(call variant-run,slip4,--attack clip-backdoor --aux ood)

## --variant drupe16 --aux id-filtered --aux ood (about 90 minutes on the 2-core CPU machine)
reproduce-drupe16:
	$(call variant-grid,drupe16,--aux id-filtered --aux ood)

## --variant drupe16 $(IMAGENETTE_OOD)
reproduce-drupe16-imagenette:
	$(call variant-grid,drupe16,$(IMAGENETTE_OOD))

## --variant drupe16 --aux ood --ood-images 3040 --stage-set train:epochs=90
reproduce-drupe16-gtsrb3040:
	$(call variant-grid,drupe16,--aux ood --ood-images 3040 --stage-set train:epochs=90)

## --variant drupe16-content --aux id-filtered --aux ood; then $(IMAGENETTE_OOD); then --aux ood --ood-images 3040
reproduce-drupe16-content:
	$(call variant-grid,drupe16-content,--aux id-filtered --aux ood)
	$(call variant-grid,drupe16-content,$(IMAGENETTE_OOD))
	$(call variant-grid,drupe16-content,--aux ood --ood-images 3040)

## --variant drupe8 $(IMAGENETTE_OOD); then --aux ood
reproduce-drupe8:
	$(call variant-grid,drupe8,$(IMAGENETTE_OOD))
	$(call variant-grid,drupe8,--aux ood)

## --variant drupe8-seed1 $(IMAGENETTE_OOD)
reproduce-drupe8-seed1:
	$(call variant-grid,drupe8-seed1,$(IMAGENETTE_OOD))

## --variant drupe8-content $(IMAGENETTE_OOD); then --aux ood
reproduce-drupe8-content:
	$(call variant-grid,drupe8-content,$(IMAGENETTE_OOD))
	$(call variant-grid,drupe8-content,--aux ood)

## --variant drupe8-content-seed1 $(IMAGENETTE_OOD)
reproduce-drupe8-content-seed1:
	$(call variant-grid,drupe8-content-seed1,$(IMAGENETTE_OOD))

## --variant badencoder $(IMAGENETTE_OOD); then --aux ood
reproduce-badencoder:
	$(call variant-grid,badencoder,$(IMAGENETTE_OOD))
	$(call variant-grid,badencoder,--aux ood)

## --variant badencoder-content $(IMAGENETTE_OOD); then --aux ood
reproduce-badencoder-content:
	$(call variant-grid,badencoder-content,$(IMAGENETTE_OOD))
	$(call variant-grid,badencoder-content,--aux ood)

## --variant clip $(IMAGENETTE_OOD); then --aux ood
reproduce-clip-imagenette:
	$(call variant-grid,clip,$(IMAGENETTE_OOD))
	$(call variant-grid,clip,--aux ood)

## --variant clip-content $(IMAGENETTE_OOD); then --aux ood
reproduce-clip-content:
	$(call variant-grid,clip-content,$(IMAGENETTE_OOD))
	$(call variant-grid,clip-content,--aux ood)

## --variant captions --attack clip-backdoor $(IMAGENETTE_OOD)
reproduce-captions:
	$(call variant-grid,captions,--attack clip-backdoor $(IMAGENETTE_OOD))

## --variant captions-classonly $(IMAGENETTE_OOD)
reproduce-captions-classonly:
	$(call variant-grid,captions-classonly,$(IMAGENETTE_OOD))

## --variant captions-classonly-long $(IMAGENETTE_OOD)
reproduce-captions-classonly-long:
	$(call variant-grid,captions-classonly-long,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12 $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12:
	$(call variant-grid,captions-classonly-long12,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12 --attack clip-backdoor --aux id --aux id-filtered
reproduce-captions-classonly-long12-id:
	$(call variant-grid,captions-classonly-long12,--attack clip-backdoor --aux id --aux id-filtered)

## --variant captions-classonly-long12-seed1 $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12-seed1:
	$(call variant-grid,captions-classonly-long12-seed1,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12-seed2 $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12-seed2:
	$(call variant-grid,captions-classonly-long12-seed2,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12-content $(IMAGENETTE_OOD); then --attack clip-backdoor --aux id --aux id-filtered
reproduce-captions-classonly-long12-content:
	$(call variant-grid,captions-classonly-long12-content,$(IMAGENETTE_OOD))
	$(call variant-grid,captions-classonly-long12-content,--attack clip-backdoor --aux id --aux id-filtered)

## --variant captions-classonly-long12-content-seed1 $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12-content-seed1:
	$(call variant-grid,captions-classonly-long12-content-seed1,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12-content-seed2 $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12-content-seed2:
	$(call variant-grid,captions-classonly-long12-content-seed2,$(IMAGENETTE_OOD))

## --variant captions-classonly-long20 $(IMAGENETTE_OOD)
reproduce-captions-classonly-long20:
	$(call variant-grid,captions-classonly-long20,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12-dede3x $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12-dede3x:
	$(call variant-grid,captions-classonly-long12-dede3x,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12-crops6 $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12-crops6:
	$(call variant-grid,captions-classonly-long12-crops6,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12-crops6-seed1 $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12-crops6-seed1:
	$(call variant-grid,captions-classonly-long12-crops6-seed1,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12-crops6-seed2 $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12-crops6-seed2:
	$(call variant-grid,captions-classonly-long12-crops6-seed2,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12-crops6-seed3 $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12-crops6-seed3:
	$(call variant-grid,captions-classonly-long12-crops6-seed3,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12-crops6-content $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12-crops6-content:
	$(call variant-grid,captions-classonly-long12-crops6-content,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12-crops6-content-seed1 $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12-crops6-content-seed1:
	$(call variant-grid,captions-classonly-long12-crops6-content-seed1,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12-crops6-content-seed2 $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12-crops6-content-seed2:
	$(call variant-grid,captions-classonly-long12-crops6-content-seed2,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12-crops6-content-seed3 $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12-crops6-content-seed3:
	$(call variant-grid,captions-classonly-long12-crops6-content-seed3,$(IMAGENETTE_OOD))

## --variant captions-classonly-long12-crops12 $(IMAGENETTE_OOD)
reproduce-captions-classonly-long12-crops12:
	$(call variant-grid,captions-classonly-long12-crops12,$(IMAGENETTE_OOD))

## --variant drupe8-crops6 $(IMAGENETTE_OOD)
reproduce-drupe8-crops6:
	$(call variant-grid,drupe8-crops6,$(IMAGENETTE_OOD))

## every `-content` grid: the detectors of another variant's grid (made by its own target), copied and calibrated again with the content-adjusted score, then evaluated as usual (about a minute per detector)
reproduce-content: reproduce-captions-classonly-long12-content reproduce-drupe8-content reproduce-badencoder-content \
	reproduce-clip-content reproduce-captions-classonly-long12-crops6-content \
	reproduce-captions-classonly-long12-content-seed1 reproduce-captions-classonly-long12-content-seed2 \
	reproduce-captions-classonly-long12-crops6-content-seed1 reproduce-captions-classonly-long12-crops6-content-seed2 \
	reproduce-captions-classonly-long12-crops6-content-seed3 reproduce-drupe8-content-seed1 reproduce-drupe16-content
