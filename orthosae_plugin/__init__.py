"""orthosae-plugin: the `ortho_contrastive` SAE architecture for SAELens."""
