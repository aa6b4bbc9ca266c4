/// The Python side of `DashboardTests`: headless Chromium through selenium, run with the test
/// venv's Python. It talks to the Swift side through files in a shared directory (each side
/// polls for the other's file with a deadline), and prints one JSON object of what it read.
///
/// argv: URL of the page, the shared directory, the screenshot paths (laptop, phone).
enum DashboardDriver {
    static let script = #"""
import json, os, sys, time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

url, shared, shot, phone_shot = sys.argv[1:5]

def wait_file(name, seconds=30):
    deadline = time.monotonic() + seconds
    path = os.path.join(shared, name)
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                return f.read()
        time.sleep(0.02)
    raise SystemExit("timed out waiting for " + name)

def signal(name, text=""):
    with open(os.path.join(shared, name + ".tmp"), "w") as f:
        f.write(text)
    os.rename(os.path.join(shared, name + ".tmp"), os.path.join(shared, name))

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,2200",
          "--force-device-scale-factor=1", "--lang=en-US"]:
    options.add_argument(a)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
out = {}
try:
    driver.set_page_load_timeout(20)
    driver.get(url)
    wait = WebDriverWait(driver, 20, poll_frequency=0.05)
    # The page redraws its tables on every poll: everything is read in one script, at one instant.
    SNAPSHOT = """
    const rows = (sel, attrs) => [...document.querySelectorAll(sel)].map((tr) => {
      const row = {}; for (const a of attrs) row[a] = tr.getAttribute("data-" + a);
      row.cells = [...tr.querySelectorAll("td")].map((td) => td.textContent); return row; });
    const figures = {};
    for (const el of document.querySelectorAll("[id][data-value]")) figures[el.id] = {text: el.textContent, value: el.getAttribute("data-value")};
    return {figures,
      deployments: rows("#deployments tr[data-deployment]", ["group", "deployment", "health"]),
      errors: rows("#errors tr[data-code]", ["code", "status"]),
      cache_days: rows("#cache-days tr[data-day]", ["day", "model"]),
      spend_models: rows("#spend-models tr[data-model]", ["model"]),
      budget_text: (document.getElementById("budget-day") || {}).textContent,
      status: document.getElementById("status").textContent,
      source_mentions_secret: document.documentElement.outerHTML.includes("SECRET")};
    """
    snapshot = lambda: driver.execute_script(SNAPSHOT)
    polls = lambda: int(snapshot()["figures"]["polls"]["value"])
    wait.until(lambda d: polls() >= 2)
    signal("page-ready")

    expected = json.loads(wait_file("traffic-done"))
    # The page has seen all the traffic once its figures say so (the deployment ejected by it
    # shows in the same poll).
    def caught_up(_):
        s = snapshot()
        f = s["figures"]
        return (f.get("requests-total", {}).get("value") == str(expected["finished"])
                and f.get("hit-ratio", {}).get("value") is not None
                and abs(float(f["hit-ratio"]["value"]) - expected["hit_ratio"]) < 1e-9
                and len(s["errors"]) == expected["errors"]) and s
    out.update(wait.until(caught_up))
    driver.save_screenshot(shot)

    # A reload: the page keeps polling and shows the new configuration, its counts intact.
    before = polls()
    signal("checked")
    wait_file("reloaded")
    def reloaded(_):
        s = snapshot()
        groups = sorted({r["group"] for r in s["deployments"]})
        return "later" in groups and int(s["figures"]["polls"]["value"]) >= before + 2 and {
            "requests_total": s["figures"]["requests-total"]["value"], "groups": groups, "status": s["status"]}
    out["after_reload"] = wait.until(reloaded)

    # A phone's width: nothing wider than the screen (tables scroll inside their boxes).
    driver.set_window_size(390, 1600)
    wait.until(lambda d: d.execute_script("return window.innerWidth") <= 390)
    at = polls()
    wait.until(lambda d: polls() > at)  # drawn again at the new size
    out["phone_overflow"] = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    driver.save_screenshot(phone_shot)
    out["console"] = [e for e in driver.get_log("browser")]
finally:
    driver.quit()
print(json.dumps(out))
"""#
}
