"""Reproduction of a hierarchical (cascaded) leukemia classifier on the Kaggle ALL data.

The paper (Kalaiyarasi, Rajaguru and Karthikeyan, "Optimizing Deep Learning Framework for
Effective Histopathological Leukemia Detection and Classification: A Hierarchical
Approach") trains InceptionV3, EfficientNetB0, VGG19, ResNet50 and DenseNet201 on
peripheral blood smear images and chains them, so that a sample a stage is unsure of
moves on to the next.

Modules:
    data: dataset discovery and checks, duplicate grouping, leak-free split manifests.
    transforms: Macenko stain normalization with a cache, augmentation, datasets.
    training: timm backbones, resumable training with early stopping.
    presets: the ``paper``, ``cpu`` and ``smoke`` settings and their overrides.
    report: metrics, figures and the Markdown report.
"""
