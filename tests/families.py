"""Every family in FAMILIES at test size (``Family.tiny``), so that a test parametrised over them covers a new
family without an edit; tied embeddings too, for the families that have them."""

from models.families.lookup import FAMILIES

TINY = {name: f.tiny() for name, f in FAMILIES.items()}
TIED = {
    f"{name}-tied": f.tiny(tie_embeddings=True)
    for name, f in FAMILIES.items()
    if "tie_embeddings" in f.config.model_fields
}
