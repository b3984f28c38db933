# Long runs are make targets whose outputs are committed (models/, docs/); tests never train at this scale.
# `make -j2 demo` builds both demo bundles at the cpu preset on a 2-core machine (about 45 minutes) and
# evaluates them; every step is a file target, so an interrupted build resumes where it stopped.
VENV    ?= .venv
DEDE    ?= $(VENV)/bin/dede
PY      ?= $(VENV)/bin/python
PRESET  ?= cpu
RUNS    ?= runs/demo-$(PRESET)
BAD     := models/demo-cifar10-badencoder
CLEAN   := models/demo-cifar10-clean
# one thread per job: with two jobs on two cores, oversubscribed BLAS threads slow training ~5x
ONE     := OMP_NUM_THREADS=1

.PHONY: demo evaluate examples study study-filter reproduce reproduce-gpu ctrl-curve reproduce-slip reproduce-slip4 reproduce-drupe16 reproduce-drupe16-imagenette reproduce-drupe16-gtsrb3040 reproduce-drupe8 reproduce-badencoder reproduce-clip-imagenette reproduce-captions reproduce-captions-classonly reproduce-captions-classonly-long reproduce-captions-classonly-long12 reproduce-captions-classonly-long20 reproduce-captions-classonly-long12-id decompose ensemble asset-scale asset-labels bench soak mask-variance test lint
.DELETE_ON_ERROR:
# The training runs behind the committed bundles (models/) are git-ignored: in a fresh checkout they are missing,
# and `make evaluate`, `examples` or `bench` must use the committed bundles instead of training them again.
# Intermediate files are only built when a prerequisite of theirs is newer than what depends on them.
.SECONDARY: $(RUNS)/clean-encoder/encoder.json $(RUNS)/badencoder/encoder.json $(RUNS)/dede-badencoder/run.json \
	$(RUNS)/dede-clean/run.json

$(RUNS)/clean-encoder/encoder.json:
	$(DEDE) pretrain --preset $(PRESET) --out $(RUNS)/clean-encoder

$(RUNS)/badencoder/encoder.json: $(RUNS)/clean-encoder/encoder.json
	$(ONE) $(DEDE) attack badencoder --encoder $(RUNS)/clean-encoder --preset $(PRESET) --out $(RUNS)/badencoder

$(RUNS)/dede-badencoder/run.json: $(RUNS)/badencoder/encoder.json
	$(ONE) $(DEDE) train --encoder $(RUNS)/badencoder --preset $(PRESET) --out $(RUNS)/dede-badencoder

$(RUNS)/dede-clean/run.json: $(RUNS)/clean-encoder/encoder.json
	$(ONE) $(DEDE) train --encoder $(RUNS)/clean-encoder --preset $(PRESET) --out $(RUNS)/dede-clean

$(BAD)/manifest.json: $(RUNS)/dede-badencoder/run.json
	$(DEDE) export --run $(RUNS)/dede-badencoder --name demo-cifar10-badencoder

$(CLEAN)/manifest.json: $(RUNS)/dede-clean/run.json
	$(DEDE) export --run $(RUNS)/dede-clean --name demo-cifar10-clean

examples: $(BAD)/manifest.json
	$(PY) -m training.evaluation.examples --bundle $(BAD) --out examples

evaluate: $(BAD)/manifest.json $(CLEAN)/manifest.json
	$(DEDE) evaluate --bundle $(BAD) --control-bundle $(CLEAN) --preset $(PRESET) --command-line "make evaluate"

demo: $(BAD)/manifest.json $(CLEAN)/manifest.json
	$(MAKE) examples evaluate

# the scale and poisoning study (docs/STUDY.md); needs the demo encoders from `make demo` and a weaker
# encoder pair (width 8, 3 SimCLR epochs, then the same BadEncoder attack) for the encoder-quality axis
$(RUNS)/w8-e3/clean-encoder/encoder.json:
	$(ONE) $(DEDE) pretrain --preset $(PRESET) --set width=8 --set epochs=3 --out $(RUNS)/w8-e3/clean-encoder

$(RUNS)/w8-e3/badencoder/encoder.json: $(RUNS)/w8-e3/clean-encoder/encoder.json
	$(ONE) $(DEDE) attack badencoder --encoder $(RUNS)/w8-e3/clean-encoder --preset $(PRESET) --out $(RUNS)/w8-e3/badencoder

# The two most expensive cells (40,000 auxiliary images; a width-128 six-block detector) are skipped by
# default on a 2-core machine: `make study STUDY_SKIP=` runs them too.
STUDY_SKIP ?= --skip n40000 --skip w128-d6
study: $(RUNS)/badencoder/encoder.json $(RUNS)/clean-encoder/encoder.json $(RUNS)/w8-e3/badencoder/encoder.json
	$(ONE) $(DEDE) study --bad-encoder $(RUNS)/badencoder --clean-encoder $(RUNS)/clean-encoder \
		--axis poison --axis differential --axis epochs --axis aux --axis decoder --axis encoder $(STUDY_SKIP)

# the poison rates with both defences (drop_worst, drop_dense) on the cpu-preset encoders of `make reproduce`
# (BadEncoder, then DRUPE),
# where the in-distribution cells of the grid were measured (docs/STUDY.md, axis `filter`)
study-filter: runs/reproduce-cpu/badencoder/encoder.json runs/reproduce-cpu/drupe/encoder.json \
		runs/reproduce-cpu/simclr/encoder.json
	$(ONE) $(DEDE) study --axis filter --bad-encoder runs/reproduce-cpu/badencoder --clean-encoder runs/reproduce-cpu/simclr
	$(ONE) $(DEDE) study --axis filter --bad-encoder runs/reproduce-cpu/drupe --clean-encoder runs/reproduce-cpu/simclr

# the paper's grid: five attacks x {in-distribution, out-of-distribution} auxiliary sets, controls, ASSET,
# DECREE and the downstream defence -> docs/results.json, docs/RESULTS.md, docs/figures (resumable)
reproduce:
	$(DEDE) reproduce --preset $(PRESET) --jobs 2 --threads 1

# the paper preset for one attack on a lent GPU, each training stage stopped by a wall-clock budget (seconds)
# so that it fits a short loan; the epochs each stage finished are recorded and shown in RESULTS.md, so a
# budget-stopped run is never mistaken for the paper's schedule. Resumable: rerun it if cut off. The auxiliary
# set is in-distribution (CIFAR-10 train, 1% triggered: the paper's Table 1 setting), so one dataset suffices.
GPU_BUDGET ?= --stage-set pretrain:time_budget_s=150 --stage-set attack:time_budget_s=55 \
	--stage-set train:time_budget_s=95
reproduce-gpu:
	$(DEDE) reproduce --preset paper --attack badencoder --aux id --no-baselines --no-downstream --include-weak \
		--jobs 2 --threads 4 $(GPU_BUDGET) --command-line "make reproduce-gpu"

# CTRL at the cpu preset's recipe trained for 16 epochs instead of 6, its attack success measured every 4: does the
# frequency trigger start to implant with longer SimCLR training? (docs/ctrl_curve.json; about 110 minutes on the
# 2-core CPU machine, both threads)
ctrl-curve:
	$(DEDE) attack ctrl --preset cpu --set epochs=16 --set asr_every=4 --out runs/ctrl-e16 --metrics docs/ctrl_curve.json

# the CLIP rows with the mini-CLIP and its attacks trained with SLIP's image-only term (ssl_weight=1): is the
# plain mini-CLIP's class-collapsed embedding why DeDe misses there? Clean out-of-distribution auxiliary set, so
# that a poisoned one is not the reason (a grid of its own, runs/reproduce-cpu-slip; detection cells only)
reproduce-slip:
	$(DEDE) reproduce --preset cpu --variant slip --aux ood --jobs 2 --threads 1

# the same with the image-only term weighted 4 times the CLIP loss, for CLIP Backdoor (runs/reproduce-cpu-slip4):
# does a less class-collapsed mini-CLIP give DeDe a signal? (about 50 minutes on the 2-core CPU machine)
reproduce-slip4:
	$(DEDE) reproduce --preset cpu --variant slip4 --attack clip-backdoor --aux ood --jobs 2 --threads 1

# $(call variant-grid,VARIANT,ARGS): one `dede reproduce` of a variant's grid at the cpu preset, recorded as the
# make target that ran it
variant-grid = $(DEDE) reproduce --preset cpu --variant $(1) $(2) --jobs 2 --threads 1 --command-line "make $@"

# DRUPE trained for 16 epochs instead of the cpu preset's 8 (runs/reproduce-cpu-drupe16): at 8 epochs it fired on
# 57% of the triggered images; does DeDe reach the target on a DRUPE that fires more often? (the SimCLR encoder
# is pre-trained again as in the plain grid, alone, with both threads; about 90 minutes on the 2-core CPU machine)
reproduce-drupe16:
	$(call variant-grid,drupe16,--aux id-filtered --aux ood)

# The same DRUPE with Imagenette as the out-of-distribution set (cells ood-imagenette): natural ImageNet photos, as
# STL-10 (the paper's set) is, where GTSRB is traffic signs. Every image of it (3,800: 760 held out, 3,040 to train
# on) for 90 epochs, the optimiser steps of the GTSRB detector's 15 epochs on 18,220 images. Needs the drupe16 grid
# (it trains what is missing of it first).
IMAGENETTE_OOD := --aux ood --ood-dataset imagenette --stage-set train:aux_split= --stage-set train:epochs=90
reproduce-drupe16-imagenette:
	$(call variant-grid,drupe16,$(IMAGENETTE_OOD))

# Domain or amount of data? GTSRB cut to Imagenette's 3,040 training images, 90 epochs, on the same DRUPE
reproduce-drupe16-gtsrb3040:
	$(call variant-grid,drupe16,--aux ood --ood-images 3040 --stage-set train:epochs=90)

# The cpu preset's DRUPE (8 epochs) on a SimCLR encoder pre-trained again, in a grid of its own
# (runs/reproduce-cpu-drupe8): its detectors on Imagenette (as above), then on GTSRB (the plain grid's `ood`)
reproduce-drupe8:
	$(call variant-grid,drupe8,$(IMAGENETTE_OOD))
	$(call variant-grid,drupe8,--aux ood)

# The cpu preset's BadEncoder (8 epochs) on a SimCLR encoder pre-trained again, in a grid of its own
# (runs/reproduce-cpu-badencoder): its detectors on Imagenette (as above), then on GTSRB (the plain grid's `ood`)
reproduce-badencoder:
	$(call variant-grid,badencoder,$(IMAGENETTE_OOD))
	$(call variant-grid,badencoder,--aux ood)

# the CLIP rows with natural photos as the out-of-distribution set: the mini-CLIP and both attacks trained as in the
# plain grid, in a grid of its own (runs/reproduce-cpu-clip), detectors on Imagenette, then on GTSRB (the same
# encoders on both sets)
reproduce-clip-imagenette:
	$(call variant-grid,clip,$(IMAGENETTE_OOD))
	$(call variant-grid,clip,--aux ood)

# The mini-CLIP pre-trained with captions that also describe the image (half of them: tone, colour of the centre and
# of the border, "a photo of a dark red truck on blue."), CLIP Backdoor on it, detectors on Imagenette as above
# (runs/reproduce-cpu-captions): does a mini-CLIP whose embedding keeps more of the image give DeDe a signal?
reproduce-captions:
	$(call variant-grid,captions,--attack clip-backdoor $(IMAGENETTE_OOD))

# The same with poisoned pairs whose captions name the target class only (runs/reproduce-cpu-captions-classonly): in
# `reproduce-captions` they also describe the clean image, which asks the backdoored embedding to keep its colours
reproduce-captions-classonly:
	$(call variant-grid,captions-classonly,$(IMAGENETTE_OOD))

# The same CLIP Backdoor fine-tuned for 8, 12 or 20 epochs instead of 2, and BadCLIP for 12
# (runs/reproduce-cpu-captions-classonly-long, -long12, -long20; each variant's attacks: reproduce.LONG_CLIP_ATTACKS):
# does a longer attack leave less of the image in the triggered embedding, and does DeDe then see it?
reproduce-captions-classonly-long reproduce-captions-classonly-long12 reproduce-captions-classonly-long20:
	$(call variant-grid,$(@:reproduce-%=%),$(IMAGENETTE_OOD))

# Detectors trained differently on the encoders of another variant (each variant's detector settings,
# reproduce.VARIANTS, override IMAGENETTE_OOD's 90 epochs), in grids of their own (runs/reproduce-cpu-<variant>; each
# pre-trains and attacks anew unless the encoder grid's clean encoder and attacks are copied in, as they were for the
# committed runs):
# - captions-classonly-long12-dede3x: the 12-epoch CLIP Backdoor's detector and control three times as long: is the
#   best CLIP row held back by the detector's training?
# - captions-classonly-long12-crops6 (both 12-epoch attacks), drupe8-crops6: 6 random crops of each Imagenette image
#   (18,240 images, 15 epochs: the steps of 90 epochs on the 3,040 whole images): too few distinct auxiliary images?
# - captions-classonly-long12-crops12: 12 crops (36,480 images, 15 epochs: twice the steps)
# - <variant>-seed<k> (reproduce.SEED_REPEATS): the CLIP Backdoor detector and control of the whole-image (6-crop)
#   long12 variant again with seeds 1 and 2 (1 to 3), and the drupe8 DRUPE's with seed 1: how far does the
#   detector's own seed move a row?
SEED_VARIANTS := $(foreach s,1 2,captions-classonly-long12-seed$(s)) \
	$(foreach s,1 2 3,captions-classonly-long12-crops6-seed$(s)) drupe8-seed1
# (and their `-content` twins, below)
CONTENT_SEED_VARIANTS := $(foreach s,1 2,captions-classonly-long12-content-seed$(s)) \
	$(foreach s,1 2 3,captions-classonly-long12-crops6-content-seed$(s)) drupe8-content-seed1
DETECTOR_VARIANTS := captions-classonly-long12-dede3x captions-classonly-long12-crops6 \
	captions-classonly-long12-crops12 drupe8-crops6 $(SEED_VARIANTS) captions-classonly-long12-crops6-content \
	$(CONTENT_SEED_VARIANTS)
.PHONY: $(DETECTOR_VARIANTS:%=reproduce-%)
$(DETECTOR_VARIANTS:%=reproduce-%):
	$(call variant-grid,$(@:reproduce-%=%),$(IMAGENETTE_OOD))

# The detectors of these grids scored with the content-adjusted score (service.scores `content@a`: the paper score
# over the image's content to a power fitted on the auxiliary images; reproduce.CONTENT_SCORED), in grids of their own
# (runs/reproduce-cpu-<variant>-content, each with its RESULTS.md section). Nothing is trained: each step copies the
# encoders and detector runs of runs/reproduce-cpu-<variant> (made by that grid's own target above) and calibrates the
# detectors again, about a minute per detector; then each cell is evaluated as usual. `make reproduce-content` runs
# them all.
CONTENT_TWO_SETS := drupe8-content badencoder-content clip-content
.PHONY: reproduce-content reproduce-captions-classonly-long12-content reproduce-drupe16-content \
	$(CONTENT_TWO_SETS:%=reproduce-%)
reproduce-content: reproduce-captions-classonly-long12-content $(CONTENT_TWO_SETS:%=reproduce-%) \
	reproduce-captions-classonly-long12-crops6-content $(CONTENT_SEED_VARIANTS:%=reproduce-%) reproduce-drupe16-content
reproduce-captions-classonly-long12-content:
	$(call variant-grid,$(@:reproduce-%=%),$(IMAGENETTE_OOD))
	$(call variant-grid,$(@:reproduce-%=%),--attack clip-backdoor --aux id --aux id-filtered)
$(CONTENT_TWO_SETS:%=reproduce-%):
	$(call variant-grid,$(@:reproduce-%=%),$(IMAGENETTE_OOD))
	$(call variant-grid,$(@:reproduce-%=%),--aux ood)
# the 16-epoch DRUPE's four sets: filtered in-distribution, GTSRB, Imagenette, GTSRB cut to 3,040 images
reproduce-drupe16-content:
	$(call variant-grid,$(@:reproduce-%=%),--aux id-filtered --aux ood)
	$(call variant-grid,$(@:reproduce-%=%),$(IMAGENETTE_OOD))
	$(call variant-grid,$(@:reproduce-%=%),--aux ood --ood-images 3040)

# The seed repeats' detectors, alone and with their scores averaged, for every ensemble size (docs/ENSEMBLE.md):
# what does averaging detectors trained with different seeds buy against the spread of one? (seed 0: the variant's
# own grid; the `-content` ones: the same detectors with the content-adjusted score, each member standardised by its
# own held-out content scores); $(call ensemble-of,VARIANT,SEEDS,BUNDLE,CONTROL,LABEL); no commas in a label
seed-grid = runs/reproduce-cpu-$(1)$(if $(filter 0,$(2)),,-seed$(2))/bundles
ensemble-of = $(DEDE) ensemble --label "$(5)" $(foreach s,$(2),--bundle $(call seed-grid,$(1),$(s))/$(3) \
	--control $(call seed-grid,$(1),$(s))/$(4)) --command-line "make ensemble"
ensemble:
	$(call ensemble-of,captions-classonly-long12,0 1 2,clip-backdoor-ood-imagenette,control-clip-clip-backdoor-ood-imagenette,captions-classonly-long12 CLIP Backdoor (Imagenette aux; seeds 0-2))
	$(call ensemble-of,captions-classonly-long12-crops6,0 1 2 3,clip-backdoor-ood-imagenette,control-clip-clip-backdoor-ood-imagenette,captions-classonly-long12-crops6 CLIP Backdoor (6 crops of each Imagenette image; seeds 0-3))
	$(call ensemble-of,drupe8,0 1,drupe-ood-imagenette,control-simclr-badencoder-ood-imagenette,drupe8 DRUPE (Imagenette aux; seeds 0-1))
	$(call ensemble-of,captions-classonly-long12-content,0 1 2,clip-backdoor-ood-imagenette,control-clip-clip-backdoor-ood-imagenette,captions-classonly-long12-content CLIP Backdoor (Imagenette aux; content-adjusted score; seeds 0-2))

# The paper's in-distribution auxiliary set (CIFAR-10 train, 1% triggered; Table 1) for that 12-epoch CLIP Backdoor,
# which the captions grids measured on Imagenette only, as is and without its densest 5% (cells clip-backdoor-id and
# clip-backdoor-id-filtered in runs/reproduce-cpu-captions-classonly-long12)
reproduce-captions-classonly-long12-id:
	$(call variant-grid,captions-classonly-long12,--attack clip-backdoor --aux id --aux id-filtered)

# Where each detector's separation comes from (docs/DECOMPOSITION.md): the trigger's pixels, the backdoored
# embedding, or any other image's embedding, for the demo pair and the detectors of the variant grids above (their
# bundles come from `make reproduce-drupe16 reproduce-drupe16-imagenette reproduce-drupe8 reproduce-badencoder
# reproduce-clip-imagenette reproduce-captions reproduce-captions-classonly reproduce-captions-classonly-long
# reproduce-captions-classonly-long12 reproduce-captions-classonly-long20 reproduce-captions-classonly-long12-dede3x
# reproduce-captions-classonly-long12-id reproduce-captions-classonly-long12-crops6 reproduce-captions-classonly-long12-crops12
# reproduce-drupe8-crops6 reproduce-content`).
# $(call decompose-pair,LABEL,GRID BUNDLE,GRID CONTROL[,ARGS]); no commas in a label
decompose-pair = $(DEDE) decompose --label "$(1)" --bundle runs/reproduce-cpu-$(2) --control runs/reproduce-cpu-$(3) \
	$(4) --command-line "make decompose"
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

# ASSET as the official script ran it (training set 1% triggered, one run scoring every pool) on the whole
# CIFAR-10 training split (45,000 images after the base set), BadEncoder at the cpu preset: is ASSET's chance
# AUC at 4,000 training images a matter of scale? (32 minutes on the 2-core CPU machine)
asset-scale:
	$(PY) -m training.research.baselines --root runs/reproduce-cpu --attack badencoder --clean simclr \
		--preset cpu --asset-only --asset-train 45000 --asset-train-rate 0.01 --cell baselines-badencoder-asset45000 \
		--command-line "make asset-scale" --out runs/reproduce-cpu/cells/baselines-badencoder-asset45000.json
	$(DEDE) reproduce --preset cpu --publish-only --command-line "dede reproduce --preset cpu --jobs 2 --threads 1"

# ASSET with the triggered images labelled with the attack's target class (training set and pools), as the
# official script labels its triggered test images and as a poisoned downstream set carries them: do the labels
# explain why ASSET filters downstream data well but ranks the detection pools at chance? (cpu preset, BadEncoder
# and DRUPE; about 45 minutes per attack on the 2-core CPU machine while other training shared it; a finished
# attack is not run again)
asset-labels:
	for a in badencoder drupe; do \
		test -f runs/reproduce-cpu/cells/baselines-$$a-target-labels.json || \
		$(PY) -m training.research.baselines --root runs/reproduce-cpu --attack $$a --clean simclr --preset cpu \
			--asset-only --target-labels --cell baselines-$$a-target-labels --command-line "make asset-labels" \
			--out runs/reproduce-cpu/cells/baselines-$$a-target-labels.json || exit 1; \
	done
	$(DEDE) reproduce --preset cpu --publish-only --command-line "dede reproduce --preset cpu --jobs 2 --threads 1"

# throughput/latency side by side (docs/PERFORMANCE.md) and a 2-minute soak (docs/soak.json)
bench:
	$(PY) benchmarks/bench_service.py --bundle $(BAD) --runs $(RUNS)/dede-badencoder --compare-workers 2

soak:
	$(PY) benchmarks/soak.py --bundle $(BAD) --seconds 120

# score variance with 1 vs 8 content-seeded masks, on a detector whose test mask keeps 16 of 64 patches
$(RUNS)/dede-k16/run.json: $(RUNS)/badencoder/encoder.json
	$(ONE) $(DEDE) train --encoder $(RUNS)/badencoder --preset study --set mask_ratio=0.68 --out $(RUNS)/dede-k16

mask-variance: $(RUNS)/dede-k16/run.json
	$(DEDE) export --run $(RUNS)/dede-k16 --name k16-study --out $(RUNS)/bundles
	$(PY) benchmarks/mask_variance.py --bundle $(RUNS)/bundles/k16-study

test:
	$(VENV)/bin/pytest -q

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/mypy service training
