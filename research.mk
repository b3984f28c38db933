# The research targets, included by the Makefile (its variables: DEDE, PY, ONE, PRESET, RUNS, BAD, CLEAN):
# the paper's reproduce grid, its variant grids (research-variants.mk, generated from
# training/research/variants.toml), and the studies. `make help-research` lists them, one line each (the `## ` line
# above each); docs/research/REPRODUCE.md is the same list as a table, generated with research-variants.mk.
.PHONY: help-research study study-filter reproduce reproduce-gpu ctrl-curve ensemble decompose asset-scale \
	asset-labels mask-variance demo-96

## these targets, one line each
help-research:
	@echo "make TARGET, research (research.mk, research-variants.mk; docs/research/REPRODUCE.md):"
	@$(HELP) research.mk research-variants.mk

# a weaker encoder pair for the study's encoder-quality axis: width 8, 3 SimCLR epochs, then the same BadEncoder
$(RUNS)/w8-e3/clean-encoder/encoder.json:
	$(ONE) $(DEDE) pretrain --preset $(PRESET) --set width=8 --set epochs=3 --out $(RUNS)/w8-e3/clean-encoder

$(RUNS)/w8-e3/badencoder/encoder.json: $(RUNS)/w8-e3/clean-encoder/encoder.json
	$(ONE) $(DEDE) attack badencoder --encoder $(RUNS)/w8-e3/clean-encoder --preset $(PRESET) --out $(RUNS)/w8-e3/badencoder

# The two most expensive cells (40,000 auxiliary images; a width-128 six-block detector) are skipped by
# default on a 2-core machine: `make study STUDY_SKIP=` runs them too.
STUDY_SKIP ?= --skip n40000 --skip w128-d6
## the scale and poisoning study (docs/research/STUDY.md) on the encoders of `make demo` and a weaker pair
study: $(RUNS)/badencoder/encoder.json $(RUNS)/clean-encoder/encoder.json $(RUNS)/w8-e3/badencoder/encoder.json
	$(ONE) $(DEDE) study --bad-encoder $(RUNS)/badencoder --clean-encoder $(RUNS)/clean-encoder \
		--axis poison --axis differential --axis epochs --axis aux --axis decoder --axis encoder $(STUDY_SKIP)

# (BadEncoder, then DRUPE: the encoders where the cpu grid's in-distribution cells were measured)
## the poison rates with both defences (drop_worst, drop_dense) on `make reproduce`'s BadEncoder and DRUPE (STUDY.md)
study-filter: runs/reproduce-cpu/badencoder/encoder.json runs/reproduce-cpu/drupe/encoder.json \
		runs/reproduce-cpu/simclr/encoder.json
	$(ONE) $(DEDE) study --axis filter --bad-encoder runs/reproduce-cpu/badencoder --clean-encoder runs/reproduce-cpu/simclr
	$(ONE) $(DEDE) study --axis filter --bad-encoder runs/reproduce-cpu/drupe --clean-encoder runs/reproduce-cpu/simclr

## the paper's grid: five attacks x in- and out-of-distribution aux sets, controls, baselines, downstream (RESULTS.md)
reproduce:
	$(DEDE) reproduce --preset $(PRESET) --jobs 2 --threads 1

# Each training stage stopped by a wall-clock budget (seconds) so that it fits a short loan; the epochs each stage
# finished are recorded and shown in RESULTS.md, so a budget-stopped run is never mistaken for the paper's schedule.
# The auxiliary set is in-distribution (CIFAR-10 train, 1% triggered: the paper's Table 1 setting), so one dataset
# suffices.
GPU_BUDGET ?= --stage-set pretrain:time_budget_s=150 --stage-set attack:time_budget_s=55 \
	--stage-set train:time_budget_s=95
## the paper preset for BadEncoder on a lent GPU, each training stage stopped by a time budget (GPU_BUDGET)
reproduce-gpu:
	$(DEDE) reproduce --preset paper --attack badencoder --aux id --no-baselines --no-downstream --include-weak \
		--jobs 2 --threads 4 $(GPU_BUDGET) --command-line "make reproduce-gpu"

## CTRL trained 16 epochs instead of 6, its attack success every 4 (about 110 minutes on the 2-core CPU machine)
ctrl-curve:
	$(DEDE) attack ctrl --preset cpu --set epochs=16 --set asr_every=4 --out runs/ctrl-e16 --metrics docs/research/ctrl_curve.json

# The variant grids: one `dede reproduce` of a variant's grid at the cpu preset, $(call variant-run,VARIANT,ARGS);
# variant-grid records it as the make target that ran it. Their rules are generated from the variants table.
variant-run = $(DEDE) reproduce --preset cpu --variant $(1) $(2) --jobs 2 --threads 1
variant-grid = $(call variant-run,$(1),$(2)) --command-line "make $@"
include research-variants.mk

# What does averaging detectors trained with different seeds buy against the spread of one? (seed 0: the variant's
# own grid; the `-content` ones: the same detectors with the content-adjusted score, each member standardised by its
# own held-out content scores); $(call ensemble-of,VARIANT,SEEDS,BUNDLE,CONTROL,LABEL); no commas in a label
seed-grid = runs/reproduce-cpu-$(1)$(if $(filter 0,$(2)),,-seed$(2))/bundles
ensemble-of = $(DEDE) ensemble --label "$(5)" $(foreach s,$(2),--bundle $(call seed-grid,$(1),$(s))/$(3) \
	--control $(call seed-grid,$(1),$(s))/$(4)) --command-line "make ensemble"
## the seed repeats' detectors alone and averaged, for every ensemble size (docs/research/ENSEMBLE.md)
ensemble:
	$(call ensemble-of,captions-classonly-long12,0 1 2,clip-backdoor-ood-imagenette,control-clip-clip-backdoor-ood-imagenette,captions-classonly-long12 CLIP Backdoor (Imagenette aux; seeds 0-2))
	$(call ensemble-of,captions-classonly-long12-crops6,0 1 2 3,clip-backdoor-ood-imagenette,control-clip-clip-backdoor-ood-imagenette,captions-classonly-long12-crops6 CLIP Backdoor (6 crops of each Imagenette image; seeds 0-3))
	$(call ensemble-of,drupe8,0 1,drupe-ood-imagenette,control-simclr-badencoder-ood-imagenette,drupe8 DRUPE (Imagenette aux; seeds 0-1))
	$(call ensemble-of,captions-classonly-long12-content,0 1 2,clip-backdoor-ood-imagenette,control-clip-clip-backdoor-ood-imagenette,captions-classonly-long12-content CLIP Backdoor (Imagenette aux; content-adjusted score; seeds 0-2))

# The trigger's pixels, the backdoored embedding, or any other image's embedding, for the demo pair and the
# detectors of the variant grids (their bundles come from those grids' targets: `make help-research`).
# $(call decompose-pair,LABEL,GRID BUNDLE,GRID CONTROL[,ARGS]); no commas in a label
decompose-pair = $(DEDE) decompose --label "$(1)" --bundle runs/reproduce-cpu-$(2) --control runs/reproduce-cpu-$(3) \
	$(4) --command-line "make decompose"
## where each detector's separation comes from: demo pair and variant grids (docs/research/DECOMPOSITION.md)
decompose: $(BAD)/manifest.json $(CLEAN)/manifest.json
	$(DEDE) decompose --label "demo BadEncoder (clean CIFAR-10 aux)" --bundle $(BAD) --control $(CLEAN) \
		--command-line "make decompose"
	$(call decompose-pair,drupe16 DRUPE (filtered CIFAR-10 aux),drupe16/bundles/drupe-id-filtered,drupe16/bundles/control-simclr-badencoder-id-filtered)
	$(call decompose-pair,drupe16 DRUPE (GTSRB aux),drupe16/bundles/drupe-ood,drupe16/bundles/control-simclr-badencoder-ood)
	$(call decompose-pair,drupe16 DRUPE (Imagenette aux),drupe16/bundles/drupe-ood-imagenette,drupe16/bundles/control-simclr-badencoder-ood-imagenette)
	$(call decompose-pair,drupe8 DRUPE (GTSRB aux),drupe8/bundles/drupe-ood,drupe8/bundles/control-simclr-badencoder-ood)
	$(call decompose-pair,drupe8 DRUPE (Imagenette aux),drupe8/bundles/drupe-ood-imagenette,drupe8/bundles/control-simclr-badencoder-ood-imagenette)
	$(call decompose-pair,drupe8-crops6 DRUPE (6 crops of each Imagenette image),drupe8-crops6/bundles/drupe-ood-imagenette,drupe8-crops6/bundles/control-simclr-badencoder-ood-imagenette)
	$(call decompose-pair,badencoder BadEncoder (GTSRB aux),badencoder/bundles/badencoder-ood,badencoder/bundles/control-simclr-badencoder-ood)
	$(call decompose-pair,badencoder BadEncoder (Imagenette aux),badencoder/bundles/badencoder-ood-imagenette,badencoder/bundles/control-simclr-badencoder-ood-imagenette)
	$(call decompose-pair,clip CLIP Backdoor (GTSRB aux),clip/bundles/clip-backdoor-ood,clip/bundles/control-clip-clip-backdoor-ood)
	$(call decompose-pair,clip CLIP Backdoor (Imagenette aux),clip/bundles/clip-backdoor-ood-imagenette,clip/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,clip BadCLIP (GTSRB aux),clip/bundles/badclip-ood,clip/bundles/control-clip-clip-backdoor-ood)
	$(call decompose-pair,clip BadCLIP (Imagenette aux),clip/bundles/badclip-ood-imagenette,clip/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,clip BadCLIP noise patch (Imagenette aux),clip/bundles/badclip-ood-imagenette,clip/bundles/control-clip-clip-backdoor-ood-imagenette,--trigger noise-patch)
	$(call decompose-pair,captions CLIP Backdoor (Imagenette aux),captions/bundles/clip-backdoor-ood-imagenette,captions/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,captions-classonly CLIP Backdoor (Imagenette aux),captions-classonly/bundles/clip-backdoor-ood-imagenette,captions-classonly/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,captions-classonly BadCLIP (Imagenette aux),captions-classonly/bundles/badclip-ood-imagenette,captions-classonly/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,captions-classonly-long CLIP Backdoor (Imagenette aux),captions-classonly-long/bundles/clip-backdoor-ood-imagenette,captions-classonly-long/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,captions-classonly-long12 CLIP Backdoor (Imagenette aux),captions-classonly-long12/bundles/clip-backdoor-ood-imagenette,captions-classonly-long12/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,captions-classonly-long12 BadCLIP (Imagenette aux),captions-classonly-long12/bundles/badclip-ood-imagenette,captions-classonly-long12/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,captions-classonly-long20 CLIP Backdoor (Imagenette aux),captions-classonly-long20/bundles/clip-backdoor-ood-imagenette,captions-classonly-long20/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,captions-classonly-long12 CLIP Backdoor (CIFAR-10 aux with 1% poison),captions-classonly-long12/bundles/clip-backdoor-id,captions-classonly-long12/bundles/control-clip-clip-backdoor-id)
	$(call decompose-pair,captions-classonly-long12-dede3x CLIP Backdoor (Imagenette aux; detectors 270 epochs),captions-classonly-long12-dede3x/bundles/clip-backdoor-ood-imagenette,captions-classonly-long12-dede3x/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,captions-classonly-long12 CLIP Backdoor (dense-filtered CIFAR-10 aux with 1% poison),captions-classonly-long12/bundles/clip-backdoor-id-filtered,captions-classonly-long12/bundles/control-clip-clip-backdoor-id-filtered)
	$(call decompose-pair,captions-classonly-long12-crops6 CLIP Backdoor (6 crops of each Imagenette image),captions-classonly-long12-crops6/bundles/clip-backdoor-ood-imagenette,captions-classonly-long12-crops6/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,captions-classonly-long12-crops12 CLIP Backdoor (12 crops of each Imagenette image),captions-classonly-long12-crops12/bundles/clip-backdoor-ood-imagenette,captions-classonly-long12-crops12/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,captions-classonly-long12-crops6 BadCLIP (6 crops of each Imagenette image),captions-classonly-long12-crops6/bundles/badclip-ood-imagenette,captions-classonly-long12-crops6/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,captions-classonly-long12-crops6-seed1 CLIP Backdoor (6 crops of each Imagenette image; detector seed 1),captions-classonly-long12-crops6-seed1/bundles/clip-backdoor-ood-imagenette,captions-classonly-long12-crops6-seed1/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,captions-classonly-long12-crops6-seed2 CLIP Backdoor (6 crops of each Imagenette image; detector seed 2),captions-classonly-long12-crops6-seed2/bundles/clip-backdoor-ood-imagenette,captions-classonly-long12-crops6-seed2/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,captions-classonly-long12-crops6-seed3 CLIP Backdoor (6 crops of each Imagenette image; detector seed 3),captions-classonly-long12-crops6-seed3/bundles/clip-backdoor-ood-imagenette,captions-classonly-long12-crops6-seed3/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,captions-classonly-long12-content CLIP Backdoor (Imagenette aux; content-adjusted score),captions-classonly-long12-content/bundles/clip-backdoor-ood-imagenette,captions-classonly-long12-content/bundles/control-clip-clip-backdoor-ood-imagenette)
	$(call decompose-pair,drupe8-content DRUPE (Imagenette aux; content-adjusted score),drupe8-content/bundles/drupe-ood-imagenette,drupe8-content/bundles/control-simclr-badencoder-ood-imagenette)
	$(call decompose-pair,badencoder-content BadEncoder (Imagenette aux; content-adjusted score),badencoder-content/bundles/badencoder-ood-imagenette,badencoder-content/bundles/control-simclr-badencoder-ood-imagenette)

# ASSET as the official script ran it (training set 1% triggered, one run scoring every pool), BadEncoder at the
# cpu preset: is ASSET's chance AUC at 4,000 training images a matter of scale?
## ASSET trained on all 45,000 CIFAR-10 images after the base set, BadEncoder (about 32 minutes on the 2-core CPU machine)
asset-scale:
	$(PY) -m training.research.baselines --root runs/reproduce-cpu --attack badencoder --clean simclr \
		--preset cpu --asset-only --asset-train 45000 --asset-train-rate 0.01 --cell baselines-badencoder-asset45000 \
		--command-line "make asset-scale" --out runs/reproduce-cpu/cells/baselines-badencoder-asset45000.json
	$(DEDE) reproduce --preset cpu --publish-only --command-line "dede reproduce --preset cpu --jobs 2 --threads 1"

# BadEncoder and DRUPE at the cpu preset, the triggered images of the training set and pools labelled with the
# attack's target class, as the official script labels its triggered test images and as a poisoned downstream set carries them: do the
# labels explain why ASSET filters downstream data well but ranks the detection pools at chance? (timed while other
# training shared the machine; a finished attack is not run again)
## ASSET with the triggered images labelled as the target class (about 45 minutes per attack on the 2-core CPU machine)
asset-labels:
	for a in badencoder drupe; do \
		test -f runs/reproduce-cpu/cells/baselines-$$a-target-labels.json || \
		$(PY) -m training.research.baselines --root runs/reproduce-cpu --attack $$a --clean simclr --preset cpu \
			--asset-only --target-labels --cell baselines-$$a-target-labels --command-line "make asset-labels" \
			--out runs/reproduce-cpu/cells/baselines-$$a-target-labels.json || exit 1; \
	done
	$(DEDE) reproduce --preset cpu --publish-only --command-line "dede reproduce --preset cpu --jobs 2 --threads 1"

# a detector whose test mask keeps 16 of 64 patches
$(RUNS)/dede-k16/run.json: $(RUNS)/badencoder/encoder.json
	$(ONE) $(DEDE) train --encoder $(RUNS)/badencoder --preset study --set mask_ratio=0.68 --out $(RUNS)/dede-k16

## score variance with 1 vs 8 content-seeded masks (docs/mask_variance.json)
mask-variance: $(RUNS)/dede-k16/run.json
	$(DEDE) export --run $(RUNS)/dede-k16 --name k16-study --out $(RUNS)/bundles
	$(PY) benchmarks/mask_variance.py --bundle $(RUNS)/bundles/k16-study

# Detection beyond 32 px: a SimCLR ResNet-18 (width 8) pre-trained on Imagenette's 1,800 training photos at 96 px
# (224 px is out of reach on 2 CPU cores), BadEncoder on it (target garbage_truck, the white square scaled to 30 px),
# a detector for each encoder on the same photos (the control: the clean encoder), scored on Imagenette's 2,000 test
# photos, clean and triggered (RESULTS.md, section `make demo-96`)
R96 := runs/imagenette96
IMAGENETTE96 := --set dataset=imagenette --set knn_images=1800
.PRECIOUS: $(R96)/dede-%/run.json $(R96)/bundles/imagenette96-%/manifest.json
$(R96)/clean-encoder/encoder.json:
	$(DEDE) pretrain --preset cpu $(IMAGENETTE96) --set image_size=96 --set width=8 --set epochs=12 \
		--out $(R96)/clean-encoder

$(R96)/badencoder/encoder.json: $(R96)/clean-encoder/encoder.json
	$(DEDE) attack badencoder --encoder $(R96)/clean-encoder --preset cpu $(IMAGENETTE96) \
		--set target_class=n03417042_garbage_truck --set shadow_fraction=0.9 --set epochs=24 --set lr=0.01 \
		--out $(R96)/badencoder

$(R96)/dede-%/run.json: $(R96)/%/encoder.json
	$(DEDE) train --encoder $(R96)/$* --preset cpu --set aux_source=imagenette --set aux_split=train \
		--out $(R96)/dede-$*

$(R96)/bundles/imagenette96-%/manifest.json: $(R96)/dede-%/run.json
	$(DEDE) export --run $(R96)/dede-$* --name imagenette96-$* --out $(R96)/bundles

## BadEncoder and its control at 96 px on Imagenette: AUC and TPR at the deployed threshold (RESULTS.md)
demo-96: $(R96)/bundles/imagenette96-badencoder/manifest.json $(R96)/bundles/imagenette96-clean-encoder/manifest.json
	$(DEDE) evaluate --bundle $(R96)/bundles/imagenette96-badencoder \
		--control-bundle $(R96)/bundles/imagenette96-clean-encoder \
		--dataset imagenette --honesty-images 0 --publish --command-line "make demo-96"
