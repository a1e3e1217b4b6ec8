"""Generate the built-in `support` training set: customer-support tickets and their resolutions.

Every ticket is assembled from hand-written parts: twelve fictional companies, each
with a handful of issues (two or three ways a customer describes it, what the agent
acknowledges, the steps that fix it and what happens if they do not), six customer
tones (polite, frustrated, terse, urgent, confused, formal) with matching agent
openings, and slot values (names, order numbers, amounts, dates, devices). A seeded
`random.Random` picks the combinations, so the set is varied but exactly
reproducible: `python -m aftertune.trainsets.support_gen` rewrites
`data/support.jsonl` byte for byte, and a test checks that it does.

The companies, products, people and numbers are invented; no real ticket was used.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEED = 20240611
N_TICKETS = 420
OUT = Path(__file__).with_name("data") / "support.jsonl"


@dataclass(frozen=True)
class Issue:
    key: str
    asks: tuple[str, ...]  # how a customer describes it (slots in {braces})
    ack: tuple[str, ...]  # what the agent restates
    steps: tuple[str, ...]  # resolution steps, in order; 2-4 of them are used
    outcome: tuple[str, ...]  # what happens next / escalation


@dataclass(frozen=True)
class Company:
    name: str
    product: str
    kind: str
    issues: tuple[Issue, ...]


COMPANIES: tuple[Company, ...] = (
    Company("Lumo Home", "Lumo T2 thermostat", "smart-home device", (
        Issue("wifi",
              ("My {product} won't connect to my Wi-Fi anymore. It keeps saying 'network not found' even though "
               "my phone sees the network fine.",
               "Since I changed my router last week the {product} is stuck on 'connecting'.",
               "thermostat keeps dropping off wifi, app shows it offline"),
              ("your {product} can't join your Wi-Fi network", "the thermostat has lost its Wi-Fi connection"),
              ("On the thermostat, open Settings > Network and choose 'Forget network'.",
               "Make sure your router is broadcasting a 2.4 GHz network: the {product} does not support 5 GHz.",
               "Select your network again and enter the password; it is case-sensitive.",
               "If it still fails, hold the dial down for 10 seconds to restart the thermostat and try once more."),
              ("If it still shows offline after that, reply with the error code on the display and I'll check "
               "the connection logs on our side.",
               "Once it reconnects, your schedule and temperature history will sync back automatically.")),
        Issue("schedule",
              ("The {product} ignores my schedule. I set it to 19 degrees at 6:30 and it stays at 16.",
               "My heating schedule resets itself every few days.",
               "schedule not working, heating comes on at random times"),
              ("the thermostat isn't following the schedule you set", "your heating schedule isn't being applied"),
              ("Check that 'Eco learning' is switched off under Settings > Schedule, since it can override "
               "manual schedules.",
               "Confirm the time zone in the app matches where you live; a wrong zone shifts every schedule.",
               "Delete the schedule and create it again from the app rather than on the device.",
               "Update the firmware from Settings > About > Check for updates."),
              ("Give it a day to run the new schedule, and let me know if it drifts again.",
               "If the schedule still isn't respected, I can arrange a free replacement unit.")),
        Issue("display",
              ("The screen on my {product} went completely blank this morning but the heating still works.",
               "Display is black, nothing happens when I turn the dial."),
              ("the thermostat's display has gone blank", "the screen isn't showing anything"),
              ("Turn the dial slowly: the display sleeps after 30 seconds and wakes on movement.",
               "Check the battery level in the app; below 10% the screen switches off to save power.",
               "Replace the two AA batteries on the back plate.",
               "If the screen stays dark, remove the thermostat from the wall plate for 10 seconds and reattach it."),
              ("If none of this brings the screen back, the unit is under warranty and we'll replace it at no cost.",
               "Let me know how it goes; a blank screen with working heating is usually just power saving.")),
        Issue("battery",
              ("I keep getting 'battery low' on the {product} even with new batteries.",
               "The app warns me the battery is low every week."),
              ("the low-battery warning keeps coming back", "the thermostat is draining batteries quickly"),
              ("Use alkaline batteries; rechargeable ones run at a lower voltage and trigger the warning early.",
               "Reduce the screen brightness under Settings > Display.",
               "If your boiler supports it, connect the C-wire so the thermostat is powered from the boiler."),
              ("If the warning returns within a month of fresh alkaline batteries, we'll swap the unit under "
               "warranty.",)),
    )),
    Company("Parcelpoint", "Parcelpoint delivery", "parcel delivery", (
        Issue("not_received",
              ("My parcel {order} says delivered but I never got it. Nobody was home and it's not at the door.",
               "Tracking for {order} shows delivered on {date}, but there is no package.",
               "package {order} marked delivered, not here"),
              ("parcel {order} is marked as delivered but hasn't reached you",
               "your package {order} shows as delivered without arriving"),
              ("Check around the property and with neighbours: drivers sometimes leave parcels in a safe place "
               "or with a neighbour.",
               "Look at the delivery photo in the tracking page, which shows where the parcel was left.",
               "Wait until the end of today, as a few parcels are scanned as delivered shortly before they arrive.",
               "If it's still missing, I'll open a trace with the driver's depot."),
              ("I've flagged {order} for a trace; you'll hear back within 48 hours, and if it isn't found we'll "
               "refund or resend it.",
               "If the trace doesn't locate it, the sender can claim the full value from us.")),
        Issue("delayed",
              ("My delivery {order} was due on {date} and it still hasn't moved in the tracking for {days} days.",
               "Where is my parcel? Tracking {order} has been stuck at 'in transit' for ages."),
              ("parcel {order} has been held up in transit", "your delivery {order} is late"),
              ("I've checked the depot scans: the parcel was delayed by a missed connection at the sorting hub.",
               "It has now been rerouted and should reach your local depot within one working day.",
               "You can choose a safe place or a pickup point from the tracking page if you won't be home."),
              ("If it hasn't arrived in two working days, reply here and I'll escalate it to the hub manager.",
               "Sorry for the wait; I'll keep an eye on {order} until it's delivered.")),
        Issue("address",
              ("I made a typo in the address for {order}. It should be flat 4, not flat 14.",
               "Can I change the delivery address on {order}? I moved last week."),
              ("the delivery address on {order} needs correcting", "you'd like {order} delivered to a different address"),
              ("I've added a note to the driver with the corrected flat number.",
               "If the parcel hasn't left the depot, you can redirect it yourself from the tracking page under "
               "'Change delivery'.",
               "A redirect to a new town may add one working day."),
              ("You'll get a new delivery notification once the change is confirmed.",
               "If the change can't be made in time, the parcel will return to the depot and we'll contact you.")),
        Issue("damaged",
              ("Parcel {order} arrived crushed and the item inside is broken.",
               "The box for {order} was soaking wet and the contents are ruined."),
              ("parcel {order} arrived damaged", "the item in {order} was broken in transit"),
              ("Please keep the packaging and the item, since we may need them for the claim.",
               "Take photos of the box and the damage and reply to this message with them.",
               "Contact the sender too, as they are the ones who can send a replacement."),
              ("Once I have the photos, I'll file the damage claim; claims are usually settled within 5 working days.",)),
    )),
    Company("Brightline Bank", "Brightline app", "banking app", (
        Issue("locked",
              ("I'm locked out of the {product} after entering my passcode wrong a few times.",
               "The app says my account is locked and to contact support.",
               "locked out of app, can't see my balance"),
              ("your app access is locked after several wrong passcodes", "you're locked out of the app"),
              ("For security I can't unlock it over messages, but you can do it yourself in a couple of minutes.",
               "Tap 'Forgotten passcode' on the login screen.",
               "Verify your identity with your card details and the code we text to your registered number.",
               "Choose a new passcode that you haven't used before."),
              ("Your account and money are safe; only app access was paused.",
               "If you no longer have the registered phone number, call us from any phone and we'll verify you by "
               "other means.")),
        Issue("unknown_charge",
              ("There's a payment of {amount} on my card that I don't recognise, from a shop I've never heard of.",
               "I see a transaction for {amount} on {date} that I didn't make."),
              ("there's a {amount} card payment you don't recognise", "a transaction of {amount} looks unfamiliar"),
              ("First, freeze your card in the app under Card > Freeze; you can unfreeze it at any time.",
               "Tap the transaction to see the merchant's full name, since companies often bill under a "
               "different name.",
               "If you still don't recognise it, tap 'Report a problem' on the transaction to raise a dispute."),
              ("Disputes are reviewed within 10 working days, and we'll send you a replacement card if it was fraud.",
               "Never share your card PIN or app passcode, even with us.")),
        Issue("transfer_pending",
              ("I sent {amount} to my landlord on {date} and it still says pending.",
               "Transfer pending for {days} days, money left my account but not arrived."),
              ("your transfer of {amount} is still showing as pending", "a payment hasn't reached the recipient yet"),
              ("Transfers to new payees can be held for a security check for up to 24 hours.",
               "Check the payee's account number and sort code in the payment details.",
               "If the details are wrong, tap 'Cancel payment' while it's still pending."),
              ("If it's still pending tomorrow, reply here and I'll ask our payments team to trace it.",)),
        Issue("card_lost",
              ("I lost my debit card, I think I left it in a taxi.",
               "My card was stolen with my wallet last night, please help."),
              ("your card has been lost", "your card may have been stolen"),
              ("Freeze the card straight away in the app under Card > Freeze.",
               "Check recent transactions and report any you don't recognise.",
               "Order a replacement from Card > Replace card; it arrives in 3 to 5 working days.",
               "Add the new card to your phone wallet as soon as it arrives."),
              ("Your card details will change, so update any subscriptions that use the old card.",)),
    )),
    Company("Tempo", "Tempo Run 3 watch", "fitness watch", (
        Issue("sync",
              ("My {product} stopped syncing steps to the app. Last sync was {days} days ago.",
               "Steps and sleep aren't showing up in the Tempo app anymore."),
              ("your watch isn't syncing with the app", "your activity data hasn't synced"),
              ("Make sure Bluetooth is on and the Tempo app is allowed to run in the background.",
               "In the app, pull down on the Today screen to force a sync.",
               "Restart the watch by holding the side button for 15 seconds.",
               "If that fails, remove the watch from your phone's Bluetooth list and pair it again from the app."),
              ("Your data is stored on the watch for 30 days, so nothing will be lost once it syncs.",)),
        Issue("battery_drain",
              ("The battery on my {product} lasts barely a day, it used to last a week.",
               "Watch battery dies really fast since the last update."),
              ("your watch battery is draining much faster than it should", "battery life has dropped sharply"),
              ("Turn off 'Always-on display' under Settings > Display.",
               "Set GPS to 'Only during workouts' in Settings > Location.",
               "Update to the latest firmware, which fixed a battery bug in version 3.2.",
               "Fully charge the watch once, then let it run down completely to recalibrate the battery gauge."),
              ("If battery life is still under two days after this, send us a diagnostic log from Settings > Help "
               "and we'll look at a replacement.",)),
        Issue("strap",
              ("The strap on my {product} snapped after {days} days. Is this covered by warranty?",
               "the watch band broke where it joins the watch"),
              ("the strap on your watch has broken", "your watch band snapped"),
              ("Straps are covered by the 12-month warranty for manufacturing faults.",
               "Reply with your order number and a photo of the broken strap.",
               "We'll send a new strap free of charge, usually within 5 working days."),
              ("In the meantime, any standard 20 mm quick-release strap fits the watch.",)),
        Issue("heart_rate",
              ("My heart rate reading on the {product} says 180 when I'm just sitting on the sofa.",
               "Heart rate readings jump around during runs, they don't look right."),
              ("the heart-rate readings look wrong", "your heart-rate data is jumping around"),
              ("Wear the watch a finger's width above the wrist bone, snug but comfortable.",
               "Clean the sensor on the back with a soft, dry cloth.",
               "For workouts, tighten the strap slightly, since movement lets light leak in and skews readings."),
              ("The watch is not a medical device; if you feel unwell, please speak to a doctor rather than rely on "
               "the readings.",)),
    )),
    Company("Northwind Fibre", "Northwind broadband", "internet provider", (
        Issue("slow",
              ("My internet has been really slow for {days} days, I'm paying for 500 Mb and getting about 20.",
               "Broadband speed is terrible in the evenings, videos keep buffering.",
               "internet super slow, speed test says 15mbps"),
              ("your broadband is running far below your plan's speed", "your connection has been slow"),
              ("Run a speed test with a cable plugged into the router, since Wi-Fi speeds vary a lot by room.",
               "Restart the router by switching it off at the wall for 30 seconds.",
               "Move the router off the floor and away from microwaves and thick walls.",
               "If the wired speed is still low, I'll run a line test from our side."),
              ("If the wired speed is under 250 Mb after these steps, reply and I'll book an engineer visit at no "
               "charge.",
               "I've also checked for faults in your area: there are none reported right now.")),
        Issue("outage",
              ("No internet at all since {date}, the router light is flashing red.",
               "Our connection is completely down and I work from home!"),
              ("your connection is down", "you have no internet service"),
              ("There's a confirmed fault on the line in your area, and engineers are already working on it.",
               "You can follow progress on the service status page.",
               "Once service is back, restart your router to reconnect."),
              ("We'll credit your account for every full day without service, automatically.",
               "If you need internet urgently, you can use the free mobile data pass I've added to your account.")),
        Issue("double_bill",
              ("I've been charged twice this month, {amount} taken two times.",
               "Why is there two payments of {amount} on my bank statement from you?"),
              ("you were charged {amount} twice this month", "a duplicate payment was taken"),
              ("I can see the duplicate payment, caused by a billing system error on {date}.",
               "I've issued a refund for the second payment.",
               "It will show on your statement in 3 to 5 working days."),
              ("Sorry for the mistake; your next bill is not affected.",)),
        Issue("moving",
              ("I'm moving house on {date}. How do I move my broadband?",
               "can I take my internet contract to my new address"),
              ("you're moving home and want to take your broadband with you",),
              ("Give us your new address and moving date from My Account > Moving home, at least 14 days ahead.",
               "We'll check availability at the new address and book the switch-over for your moving day.",
               "Take the router with you and plug it in once the line is live."),
              ("There's no charge to move if your new address is in our network.",)),
    )),
    Company("Quillnote", "Quillnote", "notes app subscription", (
        Issue("notes_missing",
              ("After the latest update all my notes in {product} disappeared! Years of work!",
               "Some of my notebooks are empty since yesterday."),
              ("notes are missing after the update", "some notebooks appear empty"),
              ("Don't uninstall the app: your notes are stored in your account, not only on the device.",
               "Sign out and sign back in to force a full download from the cloud.",
               "Check the Trash notebook and 'Recently deleted' in the web version.",
               "If they're still missing, I can restore a backup of your account from before the update."),
              ("We keep daily backups for 30 days, so your notes can be recovered.",)),
        Issue("cancel",
              ("How do I cancel my {product} subscription?",
               "I want to cancel premium, it's too expensive for me right now."),
              ("you'd like to cancel your subscription",),
              ("Go to Settings > Account > Subscription and choose 'Cancel plan'.",
               "If you subscribed through the App Store or Google Play, cancel it there instead.",
               "You'll keep premium features until the end of the period you've paid for."),
              ("Your notes stay available on the free plan after that.",
               "If price is the issue, the student plan is half price; let me know if you'd like details.")),
        Issue("charged_after_cancel",
              ("I cancelled last month but you still charged me {amount} on {date}.",
               "I was billed after cancelling, I want my money back."),
              ("you were charged {amount} after cancelling", "a charge came through after you cancelled"),
              ("I can see the cancellation was started but not confirmed, so the renewal went through.",
               "I've cancelled the subscription now and refunded the {amount} payment.",
               "You'll get a confirmation email within the hour."),
              ("The refund takes 3 to 5 working days to appear.",)),
        Issue("export",
              ("Is there a way to export all my notes from {product}?",
               "I need my notes as files, how do I export everything?"),
              ("you want to export your notes",),
              ("In the desktop app, open File > Export all.",
               "Choose Markdown for plain files or PDF for printing.",
               "Attachments are saved in a folder next to the exported notes."),
              ("Exporting doesn't delete anything from your account.",)),
    )),
    Company("CasaBrew", "CasaBrew Duo coffee machine", "kitchen appliance", (
        Issue("leak",
              ("My {product} is leaking water underneath every time I make a coffee.",
               "There's a puddle under the coffee machine every morning."),
              ("your coffee machine is leaking", "water is collecting under the machine"),
              ("Check that the water tank is pushed all the way down; a tank that isn't seated leaks at the base.",
               "Empty and reinsert the drip tray, since a full tray overflows.",
               "Inspect the rubber seal at the bottom of the tank for cracks."),
              ("If it keeps leaking, the machine is under warranty and we'll collect it for repair free of charge.",)),
        Issue("descale_light",
              ("The descaling light on my {product} won't switch off even after I descaled it.",
               "descale light stays on"),
              ("the descaling light stays on after descaling",),
              ("Descaling only resets the light if the full cycle runs: it takes about 25 minutes.",
               "Fill the tank with descaler and water to the MAX line and hold both cup buttons for 5 seconds "
               "to start the cycle.",
               "When the light flashes, rinse the tank and run the rinse cycle with clean water."),
              ("If the light still won't turn off, let me know and I'll send instructions for a manual reset.",)),
        Issue("weak",
              ("Coffee from my {product} tastes weak and watery lately.",
               "The espresso is thin and has no crema."),
              ("your coffee is coming out weak", "the espresso has lost its strength"),
              ("Set the grinder one or two steps finer.",
               "Use beans roasted within the last month; stale beans make thin coffee.",
               "Descale the machine, since scale lowers the brewing temperature."),
              ("Most customers find the taste returns after a finer grind and a descale.",)),
        Issue("missing_part",
              ("My new {product} arrived without the milk frother attachment.",
               "box was missing the milk jug"),
              ("a part was missing from your box", "the milk frother wasn't in the package"),
              ("Sorry about that; I've ordered the missing part for you.",
               "It ships separately and should arrive within 3 working days.",
               "No need to return anything."),
              ("You'll get a tracking number by email once it's dispatched.",)),
    )),
    Company("Skyway Air", "Skyway Air", "airline", (
        Issue("cancelled",
              ("My flight on {date} was cancelled and I need to get to {city} for a wedding.",
               "Flight cancelled, what are my options? Booking reference {order}."),
              ("your flight was cancelled", "your booking {order} was affected by a cancellation"),
              ("You can rebook onto the next available flight at no cost from Manage booking.",
               "If you'd rather not travel, you can request a full refund instead.",
               "If the cancellation leaves you overnight, keep your hotel and meal receipts for reimbursement."),
              ("I've placed a hold on a seat on the next flight to {city} for 24 hours while you decide.",
               "You may also be entitled to compensation; you can claim from the Help page with booking {order}.")),
        Issue("baggage",
              ("My suitcase didn't arrive in {city}. It's been {days} days.",
               "Lost luggage from my flight on {date}, nobody is answering at the airport."),
              ("your bag hasn't arrived", "your luggage is missing"),
              ("If you haven't yet, file a missing-bag report with your booking reference {order}.",
               "You can track the search online with the file reference you receive.",
               "Keep receipts for essentials you buy; we reimburse reasonable costs."),
              ("Most delayed bags are delivered to your address within 3 days.",)),
        Issue("name_change",
              ("I spelt my surname wrong on booking {order}. Can it be fixed?",
               "name on ticket has a typo"),
              ("the name on booking {order} has a spelling mistake",),
              ("Corrections of up to three letters are free.",
               "Reply with the name exactly as it appears in the passport.",
               "We'll reissue the ticket and email the updated itinerary."),
              ("Make the correction before check-in opens, 24 hours before departure.",)),
        Issue("refund",
              ("I was promised a refund for my cancelled flight {order} weeks ago and have nothing.",
               "Where is my refund of {amount}?"),
              ("your refund for {order} hasn't arrived", "you're still waiting for a {amount} refund"),
              ("I can see the refund was approved but held because the original card has expired.",
               "Reply with the last four digits of your new card, or choose a travel voucher instead.",
               "Refunds to cards take 5 to 7 working days once released."),
              ("I'm sorry for the wait; I've marked {order} as a priority.",)),
    )),
    Company("Orbit", "Orbit streaming", "streaming service", (
        Issue("buffering",
              ("Shows on {product} keep buffering every few minutes.",
               "Orbit keeps freezing and saying 'loading' on my TV."),
              ("playback keeps buffering", "videos are freezing"),
              ("Restart your TV and router.",
               "Lower the playback quality to 'Auto' in Account > Playback.",
               "Clear the app's cache, or reinstall the app on the TV."),
              ("We need at least 5 Mb/s for HD; if your connection is slower, Auto will adapt.",)),
        Issue("tv_login",
              ("I can't sign in to {product} on my new smart TV, the code never works.",
               "TV app says 'code expired' every time"),
              ("you can't sign in on your TV",),
              ("Make sure the TV's date and time are set automatically, since a wrong clock rejects codes.",
               "Enter the code at the activation page within 5 minutes of it appearing.",
               "If it still fails, sign out of all devices from Account > Security and try again."),
              ("Let me know the TV model if it keeps failing and I'll check compatibility.",)),
        Issue("double_charge",
              ("I was charged twice for {product} this month, {amount} each time.",
               "two subscriptions charged on my card"),
              ("you've been charged twice", "there are two charges of {amount}"),
              ("It looks like a second account was created with the same card.",
               "I've cancelled the second account and refunded its {amount} charge.",
               "Sign in with the email address you use on your TV to keep your watch history."),
              ("The refund will show in 3 to 5 working days.",)),
        Issue("parental",
              ("How do I stop my kids watching adult shows on {product}?",
               "parental controls?"),
              ("you'd like to set up parental controls",),
              ("Create a Kids profile from Who's watching > Add profile.",
               "Set a maturity rating for each profile in Account > Profiles.",
               "Add a PIN to your own profile so the children can't switch to it."),
              ("Changes apply on every device within a few minutes.",)),
    )),
    Company("Fernleaf", "Fernleaf meal kit", "meal-kit delivery", (
        Issue("missing_ingredient",
              ("My {product} box on {date} was missing the salmon for the Thursday recipe.",
               "no chicken in my box this week"),
              ("an ingredient was missing from your box",),
              ("I'm sorry about that; I've added a credit of {amount} to your account.",
               "You can use it against your next box automatically.",
               "If you'd prefer, I can send the missing item with your next delivery instead."),
              ("I've also reported it to the packing team.",)),
        Issue("warm",
              ("The box arrived warm and the ice packs had melted. Is the meat safe?",
               "box left in the sun for hours, food was warm"),
              ("your box arrived warm", "the ice packs had melted on arrival"),
              ("For safety, please don't eat the meat, fish or dairy from this box.",
               "I've refunded those items in full.",
               "Please tell us where the box was left so we can brief the courier."),
              ("Boxes stay cold for 12 hours after delivery; anything warm past that should be thrown away.",)),
        Issue("skip",
              ("How do I skip next week's delivery? I'm away.",
               "Can I pause my {product} for a month?"),
              ("you'd like to skip or pause deliveries",),
              ("Open Upcoming deliveries and tap 'Skip' on the weeks you're away.",
               "To pause for longer, go to Account > Plan > Pause.",
               "Make changes before the Wednesday cut-off for the following week."),
              ("You won't be charged for skipped weeks.",)),
        Issue("allergy",
              ("I have a nut allergy. Are your recipes safe for me?",
               "Do your meals contain peanuts? My son is allergic."),
              ("you need to avoid nuts",),
              ("Each recipe card lists all 14 major allergens.",
               "Set the 'No nuts' preference in Account > Preferences to hide recipes containing nuts.",
               "Our kitchen handles nuts, so we cannot guarantee there are no traces."),
              ("If the allergy is severe, please talk to your doctor before ordering.",)),
    )),
    Company("Pixelprint", "Pixelprint photo prints", "photo printing", (
        Issue("colours",
              ("My prints came out much darker than the photos on my screen.",
               "The colours on my photo book look washed out."),
              ("your prints look darker than on screen", "the print colours don't match your photos"),
              ("Screens are usually brighter than paper; turn on 'Auto-enhance' at checkout to compensate.",
               "Check that the photos are in sRGB colour space.",
               "I've arranged a free reprint of the order with enhancement turned on."),
              ("The reprint ships within 2 working days.",)),
        Issue("stuck",
              ("Order {order} has been stuck in 'processing' for {days} days.",
               "my photo book isn't shipping"),
              ("order {order} has been stuck in processing",),
              ("One photo in the order was too low resolution and failed our print check.",
               "Replace the photo marked with a warning in your project, or approve printing it as it is.",
               "The order will move to production as soon as you do."),
              ("I've kept your delivery date if you make the change today.",)),
        Issue("upload",
              ("Uploading photos to {product} keeps failing halfway.",
               "upload error when adding pictures"),
              ("your uploads keep failing",),
              ("Upload in batches of 50 photos or fewer.",
               "Use JPEG or PNG files under 25 MB each.",
               "Try another browser, or the mobile app, which resumes interrupted uploads."),
              ("Photos you have already uploaded are saved in your account.",)),
    )),
    Company("Atlas Office", "Atlas Office", "business software", (
        Issue("seat",
              ("How do I add two more users to our Atlas Office plan?",
               "we hired new staff, need more licences"),
              ("you'd like to add users to your plan",),
              ("As an admin, open Admin > Billing > Seats and increase the number of seats.",
               "Invite the new users from Admin > Users by email.",
               "You'll be charged pro rata for the rest of the billing period."),
              ("New users get access as soon as they accept the invitation.",)),
        Issue("sso",
              ("Our team can't log in with single sign-on since this morning, error {code}.",
               "SSO broken, everyone gets error {code}"),
              ("single sign-on is failing with error {code}",),
              ("Error {code} means the identity provider's signing certificate has expired or changed.",
               "Upload the new certificate under Admin > Security > SSO.",
               "Admins can still sign in with a password in the meantime."),
              ("If the error remains after updating the certificate, send me the time of a failed login and I'll "
               "check our logs.",)),
        Issue("invoice",
              ("We need our invoices to show our VAT number. Can you reissue them?",
               "invoice missing company VAT id"),
              ("your invoices need to show your VAT number",),
              ("Add the VAT number under Admin > Billing > Company details.",
               "Future invoices will include it automatically.",
               "I've reissued the invoices from the last 12 months with the VAT number added."),
              ("You'll find the new invoices under Admin > Billing > Invoices.",)),
        Issue("api_limit",
              ("Our integration keeps getting HTTP 429 from the {product} API.",
               "getting rate limited on the api"),
              ("your integration is hitting the API rate limit",),
              ("The standard plan allows 100 requests per minute per workspace.",
               "Retry after the number of seconds in the Retry-After header instead of immediately.",
               "Batch updates with the bulk endpoint, which counts as one request."),
              ("If you need a higher limit, I can raise it to 300 requests per minute on the business plan.",)),
    )),
)

FIRST_NAMES = ("Amara", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kasia",
               "Liam", "Maya", "Noah", "Olu", "Priya", "Quentin", "Rosa", "Sven", "Tara", "Umar", "Vera",
               "Wen", "Yusuf", "Zoe", "Aditi", "Bruno", "Carmen", "Diego", "Freya")
LAST_NAMES = ("Okafor", "Fischer", "Martin", "Ivanov", "Rossi", "Haddad", "Kim", "Tanaka", "Silva", "Brown",
              "Nowak", "Murphy", "Patel", "Cohen", "Adeyemi", "Sharma", "Dubois", "Garcia", "Larsen", "Singh")
AGENTS = ("Sam", "Alex", "Jordan", "Taylor", "Morgan", "Riley", "Casey", "Jamie", "Robin", "Avery")
CITIES = ("Lisbon", "Toronto", "Nairobi", "Edinburgh", "Osaka", "Denver", "Krakow", "Melbourne", "Dublin", "Seville")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
CODES = ("SSO-401", "SSO-403", "AUTH-17", "SAML-22")
URGENT_REASONS = ("I'm travelling tomorrow", "I work from home and have a deadline", "my rent is due today",
                  "I have guests arriving tonight", "my manager needs this fixed before noon")

TONES = ("polite", "frustrated", "terse", "urgent", "confused", "formal")


def _slots(rng: random.Random, company: Company) -> dict[str, str]:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    return {
        "first": first,
        "full": f"{first} {last}",
        "product": company.product,
        "order": f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.randint(100000, 999999)}",
        "date": f"{rng.randint(1, 28)} {rng.choice(MONTHS)}",
        "days": str(rng.randint(2, 12)),
        "amount": rng.choice(("£", "$", "€")) + f"{rng.randint(5, 240)}.{rng.choice(('00', '49', '99', '50', '15'))}",
        "city": rng.choice(CITIES),
        "code": rng.choice(CODES),
        "agent": rng.choice(AGENTS),
        "reason": rng.choice(URGENT_REASONS),
    }


def _fill(text: str, slots: dict[str, str]) -> str:
    return text.format(**slots)


def _customer(rng: random.Random, tone: str, ask: str, slots: dict[str, str]) -> str:
    name = slots["first"]
    if tone == "polite":
        return rng.choice((
            f"Hi there, {ask} Could you help me with this? Thanks, {name}",
            f"Hello! {ask} Any help would be appreciated.",
            f"Hi, hope you're well. {ask} Thank you in advance. {name}",
        ))
    if tone == "frustrated":
        return rng.choice((
            f"This is the second time I'm writing about this. {ask} I'm really fed up and want it fixed.",
            f"Honestly, this is ridiculous. {ask} I've already wasted an hour on this.",
            f"{ask} I'm very disappointed, I expected better from you. {name}",
        ))
    if tone == "terse":
        short = ask.rstrip(".!?")
        return rng.choice((short.lower(), f"{short}. fix pls", f"{short}?"))
    if tone == "urgent":
        return rng.choice((
            f"URGENT: {ask} I need this sorted today because {slots['reason']}.",
            f"Please help asap. {ask} {slots['reason'].capitalize()}.",
        ))
    if tone == "confused":
        return rng.choice((
            f"Hello, I'm not very good with technology. {ask} I'm not sure what I did wrong. {name}",
            f"Sorry if this is a silly question. {ask} What should I do?",
        ))
    return rng.choice((  # formal
        f"Dear Support Team,\n\nI am writing regarding the following matter. {ask}\n\nKind regards,\n{slots['full']}",
        f"Good afternoon,\n\n{ask} I would be grateful for your assistance.\n\nYours sincerely,\n{slots['full']}",
    ))


def _opening(rng: random.Random, tone: str, slots: dict[str, str], ack: str) -> str:
    name = slots["first"] if tone != "terse" else rng.choice((slots["first"], "there"))
    if tone == "frustrated":
        first = rng.choice((
            f"Hi {name}, I'm sorry you've had to chase this; that's frustrating, and I want to get it resolved "
            "for you now.",
            f"Hi {name}, I understand your frustration and I'm sorry for the trouble.",
        ))
    elif tone == "urgent":
        first = rng.choice((f"Hi {name}, I understand this is urgent, so let's fix it right away.",
                            f"Hi {name}, thanks for flagging this; I'll keep it quick."))
    elif tone == "confused":
        first = rng.choice((f"Hi {name}, not a silly question at all, and you haven't done anything wrong.",
                            f"Hi {name}, no problem at all; I'll walk you through it step by step."))
    elif tone == "formal":
        first = rng.choice((f"Dear {slots['full']},\n\nThank you for contacting us.",
                            f"Dear {slots['full']},\n\nThank you for your message."))
    else:
        first = rng.choice((f"Hi {name}, thanks for reaching out.", f"Hi {name}, thanks for getting in touch.",
                            f"Hello {name},"))
    request = ack.startswith(("you'd like", "you want", "you need", "you're moving"))
    second = rng.choice((f"I can see that {ack}.", f"I understand {ack}.")
                        + (() if request else (f"Sorry to hear {ack}.",)))
    return f"{first} {second}"


def _steps(rng: random.Random, steps: tuple[str, ...], slots: dict[str, str]) -> str:
    n = len(steps) if len(steps) <= 3 else rng.randint(3, len(steps))
    chosen = [_fill(s, slots) for s in steps[:n]]
    lead = rng.choice(("Here's what to do:", "Please try the following:", "Here are the steps:",
                       "This should sort it out:"))
    return lead + "\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(chosen, 1))


def _closing(rng: random.Random, tone: str, slots: dict[str, str], company: Company) -> str:
    sign = rng.choice(("Best", "Kind regards", "Thanks", "All the best"))
    if tone == "formal":
        sign = "Kind regards"
    extra = rng.choice(("", "Is there anything else I can help with?\n\n",
                        "Just reply to this message if you need me.\n\n"))
    return f"{extra}{sign},\n{slots['agent']}\n{company.name} Support"


def ticket(rng: random.Random, index: int) -> dict[str, Any]:
    company = rng.choice(COMPANIES)
    issue = rng.choice(company.issues)
    tone = rng.choice(TONES)
    slots = _slots(rng, company)
    ask = _fill(rng.choice(issue.asks), slots)
    user = _customer(rng, tone, ask, slots)
    ack = _fill(rng.choice(issue.ack), slots)
    reply = "\n\n".join((
        _opening(rng, tone, slots, ack),
        _steps(rng, issue.steps, slots),
        _fill(rng.choice(issue.outcome), slots),
        _closing(rng, tone, slots, company),
    ))
    system = (f"You are a customer-support agent for {company.name} ({company.kind}). Answer the customer's "
              "ticket helpfully, politely and concisely, with concrete steps.")
    return {
        "id": f"support-{index:04d}",
        "company": company.name,
        "issue": issue.key,
        "tone": tone,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": reply},
        ],
    }


def generate(n: int = N_TICKETS, seed: int = SEED) -> list[dict[str, Any]]:
    """`n` tickets; the same (n, seed) always gives the same list. Exact duplicates are skipped."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(rows) < n:
        row = ticket(rng, len(rows))
        key = row["messages"][1]["content"]
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(generate()), encoding="utf-8")
    print(f"wrote {N_TICKETS} tickets to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
