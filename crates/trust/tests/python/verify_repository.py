# Verifies a TUF repository in METADATA_DIR with python-tuf's client (ngclient), trusting ROOT, and
# prints the sha256 and length of target TAG. Usage: ROOT METADATA_DIR TAG
import os, sys, tempfile
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface, Updater

root, repo, tag = sys.argv[1], sys.argv[2], sys.argv[3]

class Files(FetcherInterface):
    """Serves file:/// URLs from the repository directory, 404 for what is not there."""
    def _fetch(self, url):
        path = os.path.join(repo, url.rsplit("/", 1)[-1])
        if not os.path.exists(path):
            raise DownloadHTTPError(f"{url} not found", 404)
        with open(path, "rb") as f:
            return iter([f.read()])

work = tempfile.mkdtemp()
with open(root, "rb") as f:
    trusted = f.read()
u = Updater(metadata_dir=work, metadata_base_url="file:///repo/", target_base_url="file:///targets/", fetcher=Files(), bootstrap=trusted)
u.refresh()
info = u.get_targetinfo(tag)
if info is None:
    sys.exit(f"no target {tag}")
print(info.hashes["sha256"], info.length)
